"""`llava-avc run`: unmodified LLaVA scripts on the CPU with AVC, on the real llava-torch and the tiny
checkpoint (no mocks). Subprocess runs use `python -m llava_avc run ...`; the restoration
tests run the launcher in-process so they can inspect torch and LLaVA afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402

from llava_avc.backends import devices  # noqa: E402
from llava_avc.interfaces import cli  # noqa: E402
from llava_avc.backends.llava import compat  # noqa: E402
from llava_avc.patches import script_overrides  # noqa: E402

QUESTIONS = [
    ("a.jpg", "Is there a person in the image?"),
    ("b.jpg", "Describe this image."),
    ("c.jpg", "What color is the jacket?"),
]
CPU_4BIT_MESSAGE = "4-bit loading needs a CUDA GPU; found none; drop --load-4bit to run in fp32 on the CPU"
#: transformers >= 4.53 with bitsandbytes >= 0.48 quantize on the CPU; then --load-4bit --device cpu is allowed.
CPU_QUANTIZATION = compat.TRANSFORMERS_VERSION >= devices.MIN_TRANSFORMERS_CPU_QUANT
CPU_4BIT_REFUSED = [] if CPU_QUANTIZATION else [(["--load-4bit", "--device", "cpu"], CPU_4BIT_MESSAGE)]


@pytest.fixture
def one_thread():
    """In-process runs: one torch thread (the tiny model gains nothing from more), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, sample_image):
    """A folder with three images, a model_vqa-style jsonl and a ScienceQA-style json."""
    root = tmp_path_factory.mktemp("launcher")
    images = root / "images"
    images.mkdir()
    width, height = sample_image.size
    sample_image.save(images / "a.jpg")
    sample_image.rotate(90, expand=True).save(images / "b.jpg")
    sample_image.crop((0, 0, width, height // 2)).save(images / "c.jpg")
    with open(root / "questions.jsonl", "w") as handle:
        for index, (image, text) in enumerate(QUESTIONS):
            handle.write(json.dumps({"question_id": index, "image": image, "text": text}) + "\n")
    science = [
        {"id": "sci-img", "image": "a.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat is shown?\nA. a person\nB. a dog"},
                           {"from": "gpt", "value": "A"}]},
        {"id": "sci-text", "conversations": [{"from": "human", "value": "Which is a mammal?\nA. cat\nB. trout"},
                                             {"from": "gpt", "value": "A"}]},
    ]
    (root / "science.json").write_text(json.dumps(science))
    return root


def _launch(*argv, cwd, stdin=None, timeout=240):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny model: threads only add spin-waiting on a shared 2-core box
    return subprocess.run([sys.executable, "-m", "llava_avc", "run", *map(str, argv)], cwd=cwd,
                          env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def _answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"


def test_vqa_loader_avc_is_active_and_changes_the_answers(tiny_llava_dir, workspace):
    runs = {}
    for method in ("avc", "none"):
        answers = workspace / "answers" / f"loader-{method}.jsonl"
        result = _launch("llava.eval.model_vqa_loader", "--method", method, "--device", "cpu", "--seed", 0, "--",
                         "--model-path", tiny_llava_dir, "--question-file", "questions.jsonl",
                         "--image-folder", "images", "--answers-file", answers, "--temperature", 0,
                         "--conv-mode", "llava_v1", "--max_new_tokens", 16, cwd=workspace)
        _ok(result)
        record = json.loads(answers.with_name(f"loader-{method}.run.json").read_text())
        runs[method] = (_answers(answers), record)

    avc_answers, avc_record = runs["avc"]
    none_answers, none_record = runs["none"]
    assert [a["question_id"] for a in avc_answers] == [0, 1, 2]
    assert avc_record["status"] == "ok" and avc_record["exit_code"] == 0 and avc_record["error"] is None
    assert avc_record["method"] == "avc"
    assert avc_record["generate_calls"] == {"avc": len(QUESTIONS)}  # AVC decoded every question
    assert avc_record["config"]["method"] == "avc" and avc_record["config"]["alpha"] == 2.5
    assert avc_record["seed"] == 0 and avc_record["device"] == "cpu"
    assert avc_record["module"] == "llava.eval.model_vqa_loader"
    assert avc_record["module_args"][:2] == ["--model-path", str(tiny_llava_dir)]
    assert set(avc_record["versions"]) == {"python", "torch", "transformers", "llava", "llava-avc"}
    assert avc_record["versions"]["llava"] == "1.2.2.post1"
    assert avc_record["git_sha"] is None or len(avc_record["git_sha"]) == 40
    assert avc_record["loads"][0]["dtype"] == "torch.float32" and avc_record["loads"][0]["device"] == "cpu"
    assert none_record["method"] == "none" and none_record["config"] is None
    assert none_record["generate_calls"] == {"none": len(QUESTIONS)}
    # AVC changes what the model says (texts compared, not just the records).
    assert [a["text"] for a in avc_answers] != [a["text"] for a in none_answers]
    assert all(a["text"] for a in avc_answers + none_answers)


def test_run_llava_prints_an_answer(tiny_llava_dir, workspace):
    result = _launch("llava.eval.run_llava", "--device", "cpu", "--", "--model-path", tiny_llava_dir,
                     "--image-file", workspace / "images" / "a.jpg", "--query", "Is there a person?",
                     "--temperature", 0, "--max_new_tokens", 12, cwd=workspace)
    _ok(result)
    assert result.stdout.strip(), result.stderr[-2000:]
    assert "generate calls (avc: 1)" in result.stderr


def test_load_4bit_through_llavas_own_loader(tiny_llava_dir, workspace):
    """--load-4bit reaches LLaVA's loader, routed through llava-avc's quantized path (transformers
    >= 4.53 quantizes on the CPU; with 4.37.2 the run stops first with the message)."""
    answers = workspace / "answers" / "vqa-4bit.jsonl"
    result = _launch("llava.eval.model_vqa_loader", "--load-4bit", "--device", "cpu", "--",
                     "--model-path", tiny_llava_dir, "--question-file", "questions.jsonl", "--image-folder", "images",
                     "--answers-file", answers, "--temperature", 0, "--max_new_tokens", 4, cwd=workspace)
    if not CPU_QUANTIZATION:
        assert result.returncode == 2 and CPU_4BIT_MESSAGE in result.stderr
        return
    _ok(result)
    record = json.loads(answers.with_name("vqa-4bit.run.json").read_text())
    assert record["loads"][0]["load_4bit"] is True and record["generate_calls"] == {"avc": len(QUESTIONS)}
    assert len(_answers(answers)) == len(QUESTIONS)


def test_model_vqa_and_science(tiny_llava_dir, workspace):
    answers = workspace / "answers" / "vqa.jsonl"
    result = _launch("llava.eval.model_vqa", "--device", "cpu", "--max-new-tokens-cap", 8, "--",
                     "--model-path", tiny_llava_dir, "--question-file", "questions.jsonl", "--image-folder", "images",
                     "--answers-file", answers, "--temperature", 0, cwd=workspace)
    _ok(result)
    assert len(_answers(answers)) == len(QUESTIONS)
    record = json.loads((workspace / "answers" / "vqa.run.json").read_text())
    assert record["generate_calls"] == {"avc": len(QUESTIONS)} and record["max_new_tokens_cap"] == 8

    answers = workspace / "answers" / "science.jsonl"
    result = _launch("llava.eval.model_vqa_science", "--device", "cpu", "--max-new-tokens-cap", 8, "--",
                     "--model-path", tiny_llava_dir, "--question-file", "science.json", "--image-folder", "images",
                     "--answers-file", answers, "--temperature", 0, "--conv-mode", "llava_v1",
                     "--single-pred-prompt", cwd=workspace)
    _ok(result)
    assert [a["question_id"] for a in _answers(answers)] == ["sci-img", "sci-text"]
    record = json.loads((workspace / "answers" / "science.run.json").read_text())
    # the image question decodes with AVC; the text-only one keeps LLaVA's own path
    assert record["generate_calls"] == {"avc": 1, "none": 1}


def test_serve_cli_answers_a_piped_question_and_exits_on_eof(tiny_llava_dir, workspace):
    record_path = workspace / "serve.run.json"
    result = _launch("llava.serve.cli", "--device", "cpu", "--run-json", record_path, "--",
                     "--model-path", tiny_llava_dir, "--image-file", workspace / "images" / "a.jpg",
                     "--temperature", 0, "--max-new-tokens", 8, cwd=workspace, stdin="Is there a person?\n")
    _ok(result)
    assert result.stdout.rstrip().endswith("exit...")
    record = json.loads(record_path.read_text())
    assert record["generate_calls"] == {"avc": 1}
    assert record["module_args"][-2:] == ["--device", "cpu"]  # passed on: serve.cli has its own --device


# ---------------------------------------------------------------------------------------------
# Restoration (in-process)


def _snapshot():
    from llava.model import builder
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    owners = {"Tensor": torch.Tensor, "Module": torch.nn.Module, "Linear": torch.nn.Linear,
              "LayerNorm": torch.nn.LayerNorm, "Llava": LlavaLlamaForCausalLM}
    names = {"Tensor": ("to", "cuda", "half"), "Module": ("to", "cuda", "half"), "Linear": ("reset_parameters",),
             "LayerNorm": ("reset_parameters",), "Llava": ("generate", "forward", "_llava_avc_originals")}
    state = {}
    for key, owner in owners.items():
        for name in names[key]:
            state[(key, name)] = (name in vars(owner), getattr(owner, name, None))
    state["loader"] = builder.load_pretrained_model
    state["argv"] = list(sys.argv)
    state["main"] = sys.modules["__main__"]
    return state


def _assert_same(before, after):
    for key in before:
        if key == "argv":
            assert before[key] == after[key]
        elif isinstance(before[key], tuple):
            assert before[key][0] == after[key][0], key
            assert before[key][1] is after[key][1], key
        else:
            assert before[key] is after[key], key


def test_serve_cli_with_load_4bit_through_the_launcher(tiny_llava_dir, workspace):
    """`llava.serve.cli --load-4bit` (the flag passed on to the script) loads through llava-avc's quantized
    path and answers with AVC (transformers >= 4.53 quantizes on the CPU; 4.37.2 stops with the message)."""
    record_path = workspace / "serve-4bit.run.json"
    result = _launch("llava.serve.cli", "--device", "cpu", "--load-4bit", "--run-json", record_path, "--",
                     "--model-path", tiny_llava_dir, "--image-file", workspace / "images" / "a.jpg",
                     "--temperature", 0, "--max-new-tokens", 4, cwd=workspace, stdin="Is there a person?\n")
    if not CPU_QUANTIZATION:
        assert result.returncode == 2 and CPU_4BIT_MESSAGE in result.stderr
        return
    _ok(result)
    record = json.loads(record_path.read_text())
    assert record["module_args"][-3:] == ["--device", "cpu", "--load-4bit"]
    assert record["loads"][0]["load_4bit"] is True and record["generate_calls"] == {"avc": 1}


def test_everything_is_restored_after_a_run_and_after_a_failing_module(tiny_llava_dir, workspace, capsys, one_thread):
    from llava_avc.patches.llava_patch import _DEFAULT_METHOD, is_patched

    before = _snapshot()
    assert not is_patched() and "cuda" not in vars(torch.Tensor)
    status = cli.main(["run", "llava.eval.run_llava", "--device", "cpu", "--max-new-tokens-cap", "4",
                            "--avc-alpha", "5", "--", "--model-path", str(tiny_llava_dir),
                            "--image-file", str(workspace / "images" / "a.jpg"), "--query", "Who?",
                            "--temperature", "0"])
    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    assert captured.out.strip()
    _assert_same(before, _snapshot())
    assert not is_patched() and _DEFAULT_METHOD.get() is None
    assert torch.nn.Linear(2, 2).weight.abs().sum() > 0  # disable_torch_init undone: layers initialise again

    # A real upstream script failing midway (second image missing): everything restored, the answer
    # already written is kept and the run record says failed.
    questions = workspace / "broken.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "image": "a.jpg", "text": "Who?"}) + "\n"
                         + json.dumps({"question_id": 1, "image": "missing.jpg", "text": "Who?"}) + "\n")
    answers = workspace / "broken" / "answers.jsonl"
    status = cli.main(["run", "llava.eval.model_vqa", "--device", "cpu", "--max-new-tokens-cap", "4", "--",
                            "--model-path", str(tiny_llava_dir), "--question-file", str(questions),
                            "--image-folder", str(workspace / "images"), "--answers-file", str(answers),
                            "--temperature", "0"])
    captured = capsys.readouterr()
    assert status == 1
    assert "FileNotFoundError" in captured.err
    _assert_same(before, _snapshot())
    assert not is_patched()
    record = json.loads((workspace / "broken" / "answers.run.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 1
    assert record["error"].startswith("FileNotFoundError") and record["generate_calls"] == {"avc": 1}
    assert [a["question_id"] for a in _answers(answers)] == [0]


def test_cpu_mapping_maps_and_restores_and_refuses_nesting():
    before = _snapshot()
    with script_overrides.cpu_device_mapping():
        x = torch.ones(2, 3)
        assert x.cuda().device.type == "cpu"
        y = x.to(device="cuda", dtype=torch.float16, non_blocking=True)
        assert y.device.type == "cpu" and y.dtype == torch.float32
        assert x.to("cuda:0", torch.float16).dtype == torch.float32
        assert x.to(torch.device("cuda")).device.type == "cpu"
        assert x.half().dtype == torch.float32 and x.to(torch.float64).dtype == torch.float64
        layer = torch.nn.Linear(3, 2).cuda().half().to("cuda", dtype=torch.float16)
        assert layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu"
        with pytest.raises(RuntimeError, match="already wrapped"):
            with script_overrides.cpu_device_mapping():
                pass  # pragma: no cover
        assert script_overrides.is_cpu_mapping_active()
    _assert_same(before, _snapshot())
    assert torch.ones(1).half().dtype == torch.float16

    with pytest.raises(ZeroDivisionError):
        with script_overrides.cpu_device_mapping():
            1 / 0
    _assert_same(before, _snapshot())
    assert not script_overrides.is_cpu_mapping_active()


# ---------------------------------------------------------------------------------------------
# Usage errors


@pytest.mark.parametrize("argv, message", [
    (["--method", "avc", "--use_cd"], "conflicting method flags: avc, vcd"),
    (["--load-4bit", "--load-8bit"], "--load-4bit and --load-8bit are exclusive"),
    (["--device", "cpu", "--avc-alpha", "-1"], "alpha"),
    (["--method", "vcd", "--avc-gamma", "0.3", "--device", "cpu"], "--avc-gamma applies to avc"),
] + CPU_4BIT_REFUSED)
def test_conflicting_flags_exit_2_with_one_line(argv, message, capsys, tiny_llava_dir):
    status = cli.main(["run", "llava.eval.run_llava", *argv, "--", "--model-path", str(tiny_llava_dir),
                            "--image-file", "x.jpg", "--query", "q"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("llava-avc run: error: ") and message in err, err


def test_usage_errors_exit_2(capsys, tmp_path):
    cases = [
        (["run", "llava.eval.no_such_script", "--device", "cpu"], "no module named 'llava.eval.no_such_script'"),
        (["run", "llava.eval.run_llava", "--device", "cpu", "--model-path", "P"], "go after `--`"),
        (["run", "--device", "cpu"], "MODULE is missing"),
        (["run", "llava.eval.run_llava", "--device", "cpu", "--", "--model-path", str(tmp_path / "llava-none"),
          "--image-file", "x.jpg", "--query", "q"], "does not exist"),
    ]
    if not CPU_QUANTIZATION:
        cases.append((["run", "llava.serve.cli", "--device", "cpu", "--", "--load-4bit", "--model-path", "P"],
                      CPU_4BIT_MESSAGE))
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_process_exit_status_and_untested_module_warning(tmp_path):
    result = _launch("llava.eval.run_llava", "--load-4bit", "--device", "cpu", "--", "--query", "q", cwd=tmp_path)
    assert result.returncode == 2  # CPU_4BIT_MESSAGE, or (CPU quantization) the script's default model, offline
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("llava-avc run: error: ")
    assert CPU_4BIT_MESSAGE in last if not CPU_QUANTIZATION else \
        "so llava.eval.run_llava's default) 'facebook/opt-350m' is not in the local Hugging Face cache" in last

    # a module that is not a known LLaVA script runs, with a warning; its exit status is passed on
    result = _launch("platform", "--device", "cpu", "--method", "none", cwd=tmp_path)
    _ok(result)
    assert result.stdout.strip()
    assert "warning: platform is not one of the LLaVA scripts" in result.stderr
