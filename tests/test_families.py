"""The llava-hf backend beyond LLaVA: LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL and InstructBLIP (transformers 5), each on a tiny
random checkpoint with its processor (llava_avc.testing.tiny_families), through `llava_avc.generate`, transformers'
`generate(custom_generate=...)` and the command line.

Per family: alpha = 0 equals the model's own greedy `generate`; a left-padded batch equals one prompt at a time;
the last-query probe equals eager attention's last row; AVC equals an independent reference written from the
equations (tests/reference_family_avc.py: eager attention maps, full recompute, no llava_avc import), with the
same blind tokens; bad input is one line."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("the other families are served on transformers 5 (the hf profile)", allow_module_level=True)

import torch  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from llava_avc.errors import UserError  # noqa: E402
from llava_avc.testing.family_inputs import FamilyInputs, torchvision_importable  # noqa: E402
from family_helpers import CLASSES, FAMILIES, NEW_TOKENS, QUESTIONS, family_images, run_cli  # noqa: E402
from reference_family_avc import reference_family_avc_greedy  # noqa: E402



@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (model, processor inputs (llava_avc.testing.family_inputs), directory) of each family's tiny checkpoint,
    built on first use; fp32, eval, left padding. The inputs come from the checkpoint's real AutoProcessor where
    torchvision imports (the hf-vision profile), else from its tokenizer and image processor (equal tensors:
    tests/test_family_processors.py)."""
    from llava_avc.testing.tiny_families import make_tiny_family

    built = {}

    def get(name: str):
        if name not in built:
            directory = make_tiny_family(tmp_path_factory.mktemp(name) / f"tiny-{name}", name, seed=0)
            model = getattr(transformers, CLASSES[name]).from_pretrained(directory).eval()
            built[name] = (model, FamilyInputs(name, directory, model, processor=torchvision_importable()), directory)
        return built[name]

    return get


@pytest.fixture(params=FAMILIES)
def family(request, checkpoints):
    """(name, model, processor inputs, directory) of one family."""
    return (request.param, *checkpoints(request.param))


def _inputs(processor, images: list, questions: list) -> dict:
    return processor(images, [processor.prompt(question) for question in questions])


def _greedy(eos_token_id=None) -> dict:
    return {"max_new_tokens": NEW_TOKENS, "do_sample": False, "eos_token_id": eos_token_id, "pad_token_id": 0}


def test_alpha_zero_equals_the_models_own_greedy_generate_on_a_padded_batch(family, sample_image):
    _, model, processor, _ = family
    inputs = _inputs(processor, family_images(sample_image), QUESTIONS)
    assert int((inputs["attention_mask"] == 0).sum()) > 0  # the batch is padded
    with torch.no_grad():
        theirs = model.generate(**inputs, **_greedy())
        ours = llava_avc.generate(model, **inputs, avc=AVCConfig(alpha=0.0), **_greedy())
    assert torch.equal(ours, theirs)
    assert not torch.equal(theirs[0, -NEW_TOKENS:], theirs[1, -NEW_TOKENS:])  # the rows differ


@pytest.mark.parametrize("config", [AVCConfig(), VCDConfig(), M3IDConfig()], ids=["avc", "vcd", "m3id"])
def test_a_left_padded_batch_equals_one_prompt_at_a_time(family, sample_image, config):
    _, model, processor, _ = family
    images = family_images(sample_image)
    with torch.no_grad():
        batch = llava_avc.generate(model, **_inputs(processor, images, QUESTIONS), **{config.method: config},
                                   **_greedy())
        for row, (image, question) in enumerate(zip(images, QUESTIONS)):
            one = llava_avc.generate(model, **_inputs(processor, [image], [question]), **{config.method: config},
                                     **_greedy())
            assert batch[row, -NEW_TOKENS:].tolist() == one[0, -NEW_TOKENS:].tolist(), row


@pytest.mark.parametrize("config", [AVCConfig(), M3IDConfig()], ids=["avc", "m3id"])
def test_custom_generate_equals_llava_avc_generate(family, sample_image, config):
    """InstructBLIP's own generate merges the image into inputs_embeds and calls its language model's generate:
    the method runs there on the merged prompt."""
    name, model, processor, _ = family
    inputs = _inputs(processor, family_images(sample_image), QUESTIONS)
    with torch.no_grad():
        ours = llava_avc.generate(model, **inputs, **{config.method: config}, return_dict_in_generate=True,
                                  **_greedy())
        theirs = model.generate(**inputs, custom_generate=llava_avc.hf.contrastive_decoding,
                                **{config.method: config}, return_dict_in_generate=True, **_greedy())
    assert torch.equal(ours.sequences, theirs.sequences)
    for mine, other in zip(ours.blind_tokens or [], theirs.blind_tokens or [], strict=True):
        assert mine.image_span == other.image_span and torch.equal(mine.blind, other.blind)


def test_instructblips_own_generate_with_vcd_is_one_line(checkpoints, sample_image):
    """VCD noises the pixels, which InstructBLIP's own generate has already encoded before the method runs."""
    model, processor, _ = checkpoints("instructblip")
    inputs = _inputs(processor, family_images(sample_image), QUESTIONS)
    with pytest.raises(UserError, match=r"^vcd noises the image's pixels, but LlamaForCausalLM.generate got the image "
                                        r"already merged into inputs_embeds .* call llava_avc.generate") as error:
        model.generate(**inputs, custom_generate=llava_avc.hf.contrastive_decoding, vcd=VCDConfig(), **_greedy())
    assert "\n" not in str(error.value)


def test_the_probe_equals_eager_attentions_last_row(family, sample_image):
    from llava_avc.backends.families import IMAGE_INPUTS
    from llava_avc.backends.hf.adapter import HFAdapter

    _, model, processor, _ = family
    inputs = _inputs(processor, family_images(sample_image)[:1], QUESTIONS[:1])
    adapter = HFAdapter(model)
    image_inputs = {name: inputs.get(name) for name in IMAGE_INPUTS}
    images, sizes = adapter.image_rows(*adapter.family.take_image_inputs(image_inputs))
    with torch.no_grad():
        merged = adapter.merge_image(inputs["input_ids"], inputs["attention_mask"], images, sizes)
        with adapter.last_query_probe(merged.attention_mask) as probe:
            adapter.forward_last_logits(merged.embeds, merged.attention_mask, merged.position_ids, adapter.new_cache(),
                                        merged.deepstack)
        saved = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            output = model(**inputs, output_attentions=True)
            attentions = getattr(output, "language_model_outputs", output).attentions  # InstructBLIP: its LM's
        finally:
            model.set_attn_implementation(saved)
    expected = torch.stack([layer[:, :, -1, :] for layer in attentions])  # (layers, 1, H, L)
    assert float((torch.stack(probe.attentions) - expected).abs().max()) <= 1e-5


def test_avc_equals_the_independent_reference_with_the_same_blind_tokens(family, sample_image):
    _, model, processor, _ = family
    image_token_id = int(model.config.image_token_id)
    changed = 0
    for image, question in zip(family_images(sample_image), QUESTIONS):
        inputs = _inputs(processor, [image], [question])
        reference = reference_family_avc_greedy(model, inputs, image_token_id, NEW_TOKENS)
        with torch.no_grad():
            out = llava_avc.generate(model, **inputs, avc=AVCConfig(), return_dict_in_generate=True, **_greedy())
            plain = model.generate(**inputs, **_greedy())
        (record,) = out.blind_tokens
        (found,) = llava_avc.find_blind_tokens(model, **inputs)  # the processor's batch as it is
        assert torch.equal(found.blind, record.blind) and found.image_span == record.image_span
        assert out.sequences[0, -NEW_TOKENS:].tolist() == reference.tokens
        assert record.image_span == reference.span and torch.equal(record.blind.cpu(), reference.blind)
        assert 0 < int(reference.blind.sum()) < reference.blind.numel()  # a real choice of blind tokens
        changed += plain[0, -NEW_TOKENS:].tolist() != reference.tokens
    assert changed  # AVC changed an answer: the comparison is not one of two plain decodings


def _text_only_inputs(processor, image) -> dict:
    """A prompt without an image token, with the pixels (and image sizes or grids) of an image beside it."""
    inputs = processor([], [processor.prompt("Is there a dog?", images=0)])
    with_image = _inputs(processor, [image], ["x"])
    inputs.update({key: value for key, value in with_image.items()
                   if key not in ("input_ids", "attention_mask", "mm_token_type_ids")})
    return inputs


def test_two_images_or_none_in_a_prompt_are_one_line_each(family, sample_image):
    _, model, processor, _ = family
    image = family_images(sample_image)[0]
    two_images = processor([image, image], [processor.prompt("Same?", images=2)])
    for inputs, message in ((two_images, r"2 images for 1 prompts: a prompt holds more than one image"),
                            (_text_only_inputs(processor, image), r"holds no image token")):
        with pytest.raises(UserError, match=message) as error:
            llava_avc.generate(model, **inputs, avc=AVCConfig(), **_greedy())
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("model_family, inputs_family", [("qwen2_5_vl", "llava_onevision"),
                                                         ("llava_onevision", "qwen3_vl"),
                                                         ("qwen3_vl", "instructblip"),
                                                         ("instructblip", "qwen2_5_vl")])
def test_inputs_of_another_familys_processor_are_one_line(checkpoints, sample_image, model_family, inputs_family):
    model = checkpoints(model_family)[0]
    inputs = _inputs(checkpoints(inputs_family)[1], family_images(sample_image)[:1], QUESTIONS[:1])
    with pytest.raises(UserError, match=r"^pixel_values .* come from the processor of a .*, and the model is a "
                                        + CLASSES[model_family]) as error:
        llava_avc.generate(model, **inputs, avc=AVCConfig(), **_greedy())
    assert "\n" not in str(error.value)


def test_every_unquantized_module_name_is_a_module_of_the_family(family):
    """4/8-bit loading keeps these modules unquantized (transformers matches the names from the start)."""
    from llava_avc.backends.families import FAMILIES as SERVED

    name, model, _, _ = family
    modules = [module_name for module_name, _ in model.named_modules()]
    for prefix in SERVED[name].unquantized:
        assert any(module_name == prefix or module_name.startswith(prefix + ".") for module_name in modules), prefix


def test_ask_detects_instructblip_and_answers_like_llava_avc_generate(checkpoints, sample_image, tmp_path):
    model, processor, directory = checkpoints("instructblip")
    image = family_images(sample_image)[0]
    image.save(tmp_path / "photo.png")
    proc = run_cli("ask", "--model-path", directory, "--image", tmp_path / "photo.png", "--query", QUESTIONS[0],
                    "--max-new-tokens", NEW_TOKENS, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    inputs = _inputs(processor, [image], QUESTIONS[:1])
    with torch.no_grad():
        out = llava_avc.generate(model, **inputs, avc=AVCConfig(), max_new_tokens=NEW_TOKENS, do_sample=False)
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert proc.stdout == expected + "\n"
    assert "blind tokens:" in proc.stderr and "of 8 image tokens" in proc.stderr


def test_ask_on_qwen_needs_the_processors_torchvision(checkpoints, sample_image, tmp_path):
    """Qwen's (and OneVision's) AutoProcessor loads a video processor that needs torchvision: without it, one
    line naming the fix; with it, an answer."""
    _, _, directory = checkpoints("qwen2_5_vl")
    sample_image.save(tmp_path / "photo.png")
    proc = run_cli("ask", "--model-path", directory, "--image", tmp_path / "photo.png", "--query", QUESTIONS[0],
                    "--max-new-tokens", NEW_TOKENS, "--device", "cpu")
    if torchvision_importable():
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
    else:
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "the qwen2_5_vl processor of" in proc.stderr and "needs torchvision" in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", FAMILIES)
def test_the_decode_benchmark_runs_every_method_for_each_family(name, tmp_path):
    """`scripts/bench_decode.py --family NAME`: every method's row, batch 2, the asked token count."""
    import decode_benchmark as bench

    from decode_backends import BACKENDS

    checkpoint = BACKENDS[name]().ensure_checkpoint(directory=tmp_path / name, log=lambda message: None)
    rows = bench.run_benchmark(backend=name, checkpoint=checkpoint, methods=bench.METHODS, dtypes=["fp32"],
                               batches=[2], new_tokens=[3], runs=1, warmup=0, prompt_tokens=120,
                               log=lambda message: None)
    assert {row["method"] for row in rows} == set(bench.METHODS)
    for row in rows:
        assert not row.get("error") and not row.get("skipped"), row
        assert row["generated_tokens"] == 3 and row["batch"] == 2


def test_eval_pope_on_an_instructblip_checkpoint_asks_the_question_itself_and_meets_its_reference(checkpoints, sample_image, tmp_path):
    """`llava-avc eval` detects the family; its run record says the prompt is the question itself (the paper's
    InstructBLIP prompt), whatever the protocol's LLaVA conversation template."""
    import json

    from llava_avc.eval.questions import load_pope

    _, _, directory = checkpoints("instructblip")

    questions = load_pope("coco_pope_random")[:3]
    question_file = tmp_path / "coco_pope_random.json"  # the name says the POPE set (for --reference)
    question_file.write_text("\n".join(json.dumps({"question_id": q.qid, "image": q.image, "text": q.text,
                                                    "label": q.label}) for q in questions) + "\n")
    (tmp_path / "images").mkdir()
    for name in {q.image for q in questions}:
        sample_image.save(tmp_path / "images" / name)
    proc = run_cli("eval", "pope", "--model-path", directory, "--question-file", question_file,
                    "--image-folder", tmp_path / "images", "--out", tmp_path / "run", "--max-new-tokens", 3,
                    "--device", "cpu", "--batch-size", 2, "--method", "avc")
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line) for line in (tmp_path / "run" / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [q.qid for q in questions]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "the question itself" in json.dumps(record["preprocessing"])
    assert record["preprocessing"]["model_type"] == "instructblip"
    # --reference avisc-paper sets the paper's InstructBLIP row beside the run (AvisC, MS-COCO random: 88.73 % accuracy)
    scored = run_cli("score", "pope", "--answers-file", tmp_path / "run", "--reference", "avisc-paper", "--json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    reference = json.loads(scored.stdout)["reference"]
    assert reference["name"] == "avisc-paper-instructblip" and reference["method"] == "avc"
    paper = {row["metric"]: row["paper"] for row in reference["rows"]}
    assert paper["random accuracy"] == 88.73 and paper["random f1"] == 88.03, paper


def test_a_language_model_given_inputs_embeds_without_an_image_is_one_line():
    """A decoding method on a causal language model runs on a prompt whose image the caller merged into
    inputs_embeds (InstructBLIP's own generate); embeddings that are the ids' own hold no image."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    input_ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad(), pytest.raises(UserError, match=r"^LlamaForCausalLM.generate got inputs_embeds equal to the "
                                                         r"embeddings of input_ids at every position") as error:
        model.generate(input_ids=input_ids, inputs_embeds=model.get_input_embeddings()(input_ids),
                       custom_generate=llava_avc.hf.contrastive_decoding, avc=AVCConfig(), **_greedy())
    assert "\n" not in str(error.value)


def test_a_model_of_no_served_family_is_one_line_naming_the_families():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    with pytest.raises(TypeError, match=r"is not a model llava-avc can decode; .*LlavaOnevisionForConditionalGeneration, "
                                        r"Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration, "
                                        r"InstructBlipForConditionalGeneration") as error:
        llava_avc.generate(model, input_ids=torch.tensor([[1, 2]]), avc=AVCConfig(), max_new_tokens=2)
    assert "\n" not in str(error.value)
