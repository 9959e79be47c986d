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

Question files are the benchmarks' original files, unchanged. POPE's nine files and AMBER's query and
annotation files ship with the package (``data/``, with their licences and sha256 sums): give one by
name (``--question-file coco_pope_adversarial``) or give none (POPE: ``coco_pope_random``; AMBER:
``query_all``, scored against the packaged annotations). MME is not redistributable. Images are the
user's own copies and are never downloaded.

Output of a run (``--out DIR``): ``answers.jsonl`` in LLaVA's format (``question_id, prompt, text,
answer_id, model_id, metadata``; ``metadata`` adds ``config_hash``, method, protocol, image and the
label / category when the question file has them), one fsync'ed line per answer, and
``run.json`` (method, config, protocol, seed, model, versions, git SHA, device, config hash).
Rerunning the same command resumes: answered questions are skipped. A different configuration
(method, its hyperparameters, protocol, model, seed, generation settings or question set) in the
same folder is refused. ``--batch-size`` changes speed only, so it may differ between resumes.
Every question draws its sampled tokens and its VCD / AVC noise from seeds of its own, hashes of
the run's ``--seed`` and the question id (``llava_avc.algorithm.seeds``): an answer is the same
whatever the batch size, the number of processes, or the resumes that produced it. The
configuration hash includes a fingerprint of the weights (names, sizes and times of the weight
files), so answers of a checkpoint rebuilt at the same path are never mixed in. ``--seeds 42,43,44``
answers each seed into ``<out>/seed<S>/`` (each a resumable run folder of its own).

Protocols (`llava_avc.eval.protocols`): ``paper`` = the AvisC paper's setup (llava_v1, sampling
T=1 / top-p 1, 64 new tokens, seed 42, MME first question line, CLIP center crop, recorder rule);
``llava`` = LLaVA's own evaluation scripts (vicuna_v1, greedy, "Answer the question using a single
word or phrase.", 128 new tokens, pad-to-square, eval_pope.py rule).

Many GPUs, many nodes: torch's own launchers (``--out`` on a filesystem all ranks share)::

    torchrun --nproc-per-node 8 -m llava_avc eval pope --model-path P --image-folder D --out runs/pope-avc
    accelerate launch --num_processes 8 -m llava_avc eval pope ...
    torchrun --nnodes 2 --node-rank $R --rdzv-endpoint HOST:29500 --nproc-per-node 8 -m llava_avc eval pope ...
    srun -n 16 llava-avc eval pope ...                 # Slurm: SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID

Each rank (``llava_avc.eval.distributed``) answers chunk ``RANK`` of ``WORLD_SIZE`` on
``cuda:LOCAL_RANK`` (the CPU where there is no GPU) into ``answers.chunk{r}of{W}.jsonl``, resumable on
its own, and marks it done; rank 0 waits for every shard (``--shard-timeout``), merges them into
``answers.jsonl`` in question order and scores. The ranks meet through the run folder, not through
a process group, so the same code serves torchrun, accelerate and srun, across nodes. A rank that
dies loses nothing: the same command answers only the missing questions (resume with the same
number of processes). Explicit ``--num-chunks K --chunk-idx I`` (one process per chunk, as LLaVA's
``scripts/v1_5/eval/*.sh`` do, then ``llava-avc merge --out DIR``) keep working without a launcher.

``score`` trusts nothing it has not checked (``answers.load_answer_file``): a partial last line,
repeated questions, unreadable answers, answers of another benchmark or of several configurations and
missing questions are counted on an ``answers:`` line, and ``--strict`` makes each an error.
``--reference avisc-paper`` sets the paper's published row beside yours (``references``).

Modules: ``runner`` (answering, sharding, seeds, merging), ``distributed`` (launcher ranks, shard markers),
``answers`` (crash-safe files, configuration hash, chunks, checked reading), ``questions`` / ``benchmarks``
(readers, packaged data and registry), ``inputs`` (checks of queries, question records and images),
``protocols``, ``rules`` (yes/no rules), ``score_pope``, ``score_mme``, ``score_amber``, ``compare``
(tables, mean ± std over seeds, charts), ``references`` (published results), ``provenance``.
"""
