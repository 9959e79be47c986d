"""The families through their real AutoProcessors, and 4-bit / 8-bit (the hf-vision profile: transformers 5 with
a torchvision that imports beside torch, which Qwen2.5-VL's, Qwen3-VL's and LLaVA-OneVision's processors need
for the video processor they also load).

- The real processor and the builder the torchvision-free profiles use (llava_avc.testing.family_inputs) make
  equal tensors, so tests/test_families.py means the same on every profile (it uses the real processor here).
- `llava-avc ask` and `llava-avc eval pope` on each family's checkpoint: detected by model_type, prompted with
  the processor's chat template, answering as `llava_avc.generate` on the processor's own batch does.
- 4-bit and 8-bit (bitsandbytes quantizes on the CPU with transformers >= 4.53): only the decoder's linears are
  quantized (the vision tower, the projector or Q-Former and lm_head stay in fp16); in 4-bit alpha = 0 equals the
  quantized model's own greedy `generate` and a left-padded batch equals one prompt at a time (AVC, VCD, M3ID);
  8-bit decodes with every method (its CPU int8 matmul is not batch-invariant, transformers' own generate
  included, so no token equality is asserted there). The algorithm itself is checked against the independent
  reference in fp32 (tests/test_families.py): fp16 probes and eager maps differ in rounding, which moves
  borderline blind tokens."""

from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("the other families are served on transformers 5 (the hf-vision profile)", allow_module_level=True)

from llava_avc.testing.family_inputs import FamilyInputs, torchvision_importable  # noqa: E402

if not torchvision_importable():
    pytest.skip("needs a torchvision that imports beside torch: the hf-vision profile "
                "(bash scripts/install.sh --profile hf-vision)", allow_module_level=True)

import torch  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from family_helpers import CLASSES, FAMILIES, NEW_TOKENS, QUESTIONS, family_images, run_cli  # noqa: E402

WITH_VIDEO_PROCESSOR = ["llava_onevision", "qwen2_5_vl", "qwen3_vl"]
PROCESSOR_CLASSES = {"llava_onevision": "LlavaOnevisionProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                     "qwen3_vl": "Qwen3VLProcessor"}
#: Where each family's decoder layers are, from the model's root (transformers' module names).
DECODER_LAYERS = {"llava_onevision": "model.language_model.layers.", "qwen2_5_vl": "model.language_model.layers.",
                  "qwen3_vl": "model.language_model.layers.", "instructblip": "language_model.model.layers."}


@pytest.fixture(scope="module")
def checkpoint_dirs(tmp_path_factory):
    """name -> the directory of the family's tiny checkpoint (model + processor files), built on first use."""
    from llava_avc.testing.tiny_families import make_tiny_family

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = make_tiny_family(tmp_path_factory.mktemp(name) / f"tiny-{name}", name, seed=0)
        return built[name]

    return get


def _model(name: str, directory):
    return getattr(transformers, CLASSES[name]).from_pretrained(directory).eval()


def _greedy() -> dict:
    return {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0}


# ------------------------------------------------------------------------------------------ processors
@pytest.mark.parametrize("name", WITH_VIDEO_PROCESSOR)
def test_the_real_processor_and_the_builder_of_the_other_profiles_make_equal_batches(name, checkpoint_dirs,
                                                                                     sample_image):
    directory = checkpoint_dirs(name)
    model = _model(name, directory)
    real = FamilyInputs(name, directory, model, processor=True)
    built = FamilyInputs(name, directory, model, processor=False)
    assert type(real.processor).__name__ == PROCESSOR_CLASSES[name]
    prompts = [real.prompt(question) for question in QUESTIONS]
    assert prompts == [built.prompt(question) for question in QUESTIONS]
    theirs, ours = real(family_images(sample_image), prompts), built(family_images(sample_image), prompts)
    assert int((theirs["attention_mask"] == 0).sum()) > 0  # left-padded: the prompts' lengths differ
    assert set(theirs) - set(ours) <= {"batch_num_images"}, sorted(theirs)
    for key, value in ours.items():
        assert value.shape == theirs[key].shape and torch.equal(value, theirs[key].to(value.dtype)), key


@pytest.mark.parametrize("name", WITH_VIDEO_PROCESSOR)
def test_ask_answers_with_the_processors_chat_template_as_llava_avc_generate(name, checkpoint_dirs, sample_image,
                                                                             tmp_path):
    directory = checkpoint_dirs(name)
    image = family_images(sample_image)[0]
    image.save(tmp_path / "photo.png")
    proc = run_cli("ask", "--model-path", directory, "--image", tmp_path / "photo.png", "--query", QUESTIONS[0],
                    "--max-new-tokens", NEW_TOKENS, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = _model(name, directory)
    processor = transformers.AutoProcessor.from_pretrained(directory)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = llava_avc.generate(model, **inputs, avc=AVCConfig(), max_new_tokens=NEW_TOKENS, do_sample=False)
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert proc.stdout == expected + "\n"
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert "blind tokens:" in proc.stderr and f"of {image_tokens} image tokens" in proc.stderr


@pytest.mark.parametrize("name", WITH_VIDEO_PROCESSOR)
def test_eval_pope_records_the_family_and_answers_in_a_batch_as_one_by_one(name, checkpoint_dirs, sample_image,
                                                                          tmp_path):
    from llava_avc.eval.questions import load_pope

    questions = load_pope("coco_pope_random")[:3]
    question_file = tmp_path / "coco_pope_random.json"
    question_file.write_text("\n".join(json.dumps({"question_id": q.qid, "image": q.image, "text": q.text,
                                                    "label": q.label}) for q in questions) + "\n")
    (tmp_path / "images").mkdir()
    for index, image_name in enumerate(sorted({q.image for q in questions})):
        family_images(sample_image)[index % 2].save(tmp_path / "images" / image_name)
    answers = {}
    for batch in (1, 2):
        proc = run_cli("eval", "pope", "--model-path", checkpoint_dirs(name), "--question-file", question_file,
                        "--image-folder", tmp_path / "images", "--out", tmp_path / f"run{batch}",
                        "--max-new-tokens", 3, "--device", "cpu", "--batch-size", batch, "--method", "avc")
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in (tmp_path / f"run{batch}" / "answers.jsonl").read_text().splitlines()]
        assert [row["question_id"] for row in rows] == [q.qid for q in questions]
        answers[batch] = [row["text"] for row in rows]
        record = json.loads((tmp_path / f"run{batch}" / "run.json").read_text())
        assert record["preprocessing"]["model_type"] == name
        assert "chat template" in record["preprocessing"]["prompt"]
    assert answers[2] == answers[1]


# ------------------------------------------------------------------------------------------ 4-bit / 8-bit
@pytest.fixture(scope="module")
def load_quantized(checkpoint_dirs):
    """(name, bits) -> the family's HFPipeline loaded as `--load-4bit` / `--load-8bit` load it (cached)."""
    from llava_avc.backends.hf.pipeline import HFPipeline

    loaded = {}

    def get(name: str, bits: int):
        if (name, bits) not in loaded:
            loaded[name, bits] = HFPipeline.load(str(checkpoint_dirs(name)), device="cpu", load_4bit=bits == 4,
                                                 load_8bit=bits == 8)
        return loaded[name, bits]

    return get


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("name", FAMILIES)
def test_only_the_decoders_linears_are_quantized(load_quantized, name, bits):
    import bitsandbytes as bnb

    model = load_quantized(name, bits).model
    layer_class = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    names = [module_name for module_name, module in model.named_modules() if isinstance(module, layer_class)]
    assert len(names) == 7 * model.config.text_config.num_hidden_layers  # q, k, v, o, gate, up, down per layer
    assert all(module_name.startswith(DECODER_LAYERS[name]) for module_name in names), names
    kept = [module for module in model.modules()
            if isinstance(module, torch.nn.Linear) and not isinstance(module, layer_class)]
    assert kept and all(module.weight.dtype == torch.float16 for module in kept)  # tower, projector, lm_head


@pytest.mark.parametrize("name", FAMILIES)
def test_4bit_alpha_zero_equals_the_models_own_greedy_generate_on_a_padded_batch(load_quantized, name,
                                                                                 sample_image):
    pipeline = load_quantized(name, 4)
    inputs = pipeline.inputs(QUESTIONS, family_images(sample_image))
    assert int((inputs["attention_mask"] == 0).sum()) > 0
    with torch.no_grad():
        theirs = pipeline.model.generate(**inputs, **_greedy())
        ours = llava_avc.generate(pipeline.model, **inputs, avc=AVCConfig(alpha=0.0), **_greedy())
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("config", [AVCConfig(), VCDConfig(), M3IDConfig()], ids=["avc", "vcd", "m3id"])
@pytest.mark.parametrize("name", FAMILIES)
def test_4bit_a_left_padded_batch_equals_one_prompt_at_a_time(load_quantized, name, config, sample_image):
    """(8-bit is not batch-invariant on the CPU, transformers' own generate included: docs/quantization.md.)"""
    pipeline = load_quantized(name, 4)
    images = family_images(sample_image)
    with torch.no_grad():
        batch = llava_avc.generate(pipeline.model, **pipeline.inputs(QUESTIONS, images), **{config.method: config},
                                   **_greedy())
        for row, (image, question) in enumerate(zip(images, QUESTIONS)):
            one = llava_avc.generate(pipeline.model, **pipeline.inputs([question], [image]),
                                     **{config.method: config}, **_greedy())
            assert batch[row, -NEW_TOKENS:].tolist() == one[0, -NEW_TOKENS:].tolist(), row


@pytest.mark.parametrize("name", FAMILIES)
def test_8bit_decodes_with_each_method_and_real_blind_tokens(load_quantized, name, sample_image):
    pipeline = load_quantized(name, 8)
    inputs = pipeline.inputs(QUESTIONS, family_images(sample_image))
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        for config in (VCDConfig(), M3IDConfig()):
            out = llava_avc.generate(pipeline.model, **inputs, **{config.method: config}, **_greedy())
            assert out.shape == (2, prompt_length + NEW_TOKENS), config.method
        out = llava_avc.generate(pipeline.model, **inputs, avc=AVCConfig(), return_dict_in_generate=True, **_greedy())
    assert out.sequences.shape == (2, prompt_length + NEW_TOKENS)
    for record in out.blind_tokens:
        assert 0 < int(record.blind.sum()) < record.blind.numel()


@pytest.mark.parametrize("flag", ["--load-4bit", "--load-8bit"])
def test_ask_loads_a_qwen_checkpoint_quantized(checkpoint_dirs, sample_image, tmp_path, flag):
    sample_image.save(tmp_path / "photo.png")
    proc = run_cli("ask", "--model-path", checkpoint_dirs("qwen2_5_vl"), "--image", tmp_path / "photo.png",
                    "--query", QUESTIONS[0], "--max-new-tokens", NEW_TOKENS, "--device", "cpu", flag)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
    assert "blind tokens:" in proc.stderr and "Traceback" not in proc.stderr
