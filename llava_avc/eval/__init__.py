"""Benchmarks harness (POPE, MME, AMBER): answer with AVC / VCD / M3ID / plain LLaVA, then score.

Workflow::

    llava-avc eval pope --model-path liuhaotian/llava-v1.5-7b --image-folder coco/val2014 \\
        --question-file coco_pope_random.json --out runs/pope-random-avc --method avc [--protocol paper]
    llava-avc score pope --answers-file runs/pope-random-avc --question-file coco_pope_random.json
    llava-avc score pope --compare runs/pope-random-none runs/pope-random-avc --chart pope.png

    llava-avc eval mme --model-path ... --question-file MME_Benchmark_release_version --out runs/mme-avc
    llava-avc score mme --answers-file runs/mme-avc

    llava-avc eval amber --model-path ... --question-file AMBER/data/query/query_all.json \\
        --image-folder AMBER/image --out runs/amber-avc
    llava-avc score amber --answers-file runs/amber-avc --annotation-dir AMBER/data

Question files are the benchmarks'
original files, unchanged; images are the user's own copies and are never downloaded.

Output of a run (``--out DIR``): ``answers.jsonl`` in LLaVA's format (``question_id, prompt, text,
answer_id, model_id, metadata``; ``metadata`` adds ``config_hash``, method, protocol, image and the
label / category when the question file has them), one fsync'ed line per answer, and
``run.json`` (method, config, protocol, seed, model, versions, git SHA, device, config hash).
Rerunning the same command resumes: answered questions are skipped. A different configuration
(method, its hyperparameters, protocol, model, seed, generation settings or question set) in the
same folder is refused. ``--batch-size`` changes speed only, so it may differ between resumes.
Under the paper protocol (sampling) the random stream is seeded once per process, so a resumed
or chunked run samples different (equally distributed) tokens than one uninterrupted run.

Protocols (`llava_avc.eval.protocols`): ``paper`` = the AvisC paper's setup (llava_v1, sampling
T=1 / top-p 1, 64 new tokens, seed 42, MME first question line, CLIP center crop, recorder rule);
``llava`` = LLaVA's own evaluation scripts (vicuna_v1, greedy, "Answer the question using a single
word or phrase.", 128 new tokens, pad-to-square, eval_pope.py rule).

Multi-GPU launch (one process per GPU, as LLaVA's ``scripts/v1_5/eval/*.sh`` do)::

    K=4
    for i in $(seq 0 $((K-1))); do
      CUDA_VISIBLE_DEVICES=$i llava-avc eval pope --model-path liuhaotian/llava-v1.5-7b \\
          --image-folder coco/val2014 --question-file coco_pope_random.json --out runs/pope-avc \\
          --method avc --num-chunks $K --chunk-idx $i &
    done
    wait
    llava-avc merge --out runs/pope-avc        # -> runs/pope-avc/answers.jsonl, in question order

Each process writes ``answers.chunk{i}of{K}.jsonl`` (chunk i of LLaVA's ``get_chunk``: ceil(N/K)
questions each) and can be resumed on its own; ``merge`` refuses while a chunk is missing or
incomplete. Scoring reads the merged file.

Modules: ``cli`` (argparse: `register(subparsers)`), ``runner`` (answering, merging),
``answers`` (crash-safe files, configuration hash, chunks), ``questions`` / ``benchmarks``
(readers and registry), ``protocols``, ``rules`` (yes/no rules), ``score_pope``, ``score_mme``,
``score_amber``, ``compare`` (tables and charts).
"""
