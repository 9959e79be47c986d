"""Bad inputs through the real entry point (`python -m llava_avc ...`) and the Python API: each is one
line on stderr (or argparse's short usage block), exit status 2 (130 for Ctrl-C), no traceback, and no
answer file damaged or left behind.

The table (`CASES`) runs commands that must fail before any model loads, on a checkpoint that has
no weights at all (so a case that loaded one would fail differently): in-process through the CLI's own
`main` (stderr captured at the file descriptors), except the first case of each command and the cases
that set environment variables, which run as `python -m llava_avc` in a fresh process. The cases that
need a loaded model are grouped below it (one subprocess each, 2 new tokens).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import BENCHMARKS

LLAVA = importlib.util.find_spec("llava") is not None
POPE_LINES = (BENCHMARKS / "pope" / "coco_pope_random.json").read_text().splitlines()[:12]
UNCACHED_ID = "llava-avc-tests/certainly-not-cached-llava-7b"
needs_llava = pytest.mark.skipif(not LLAVA, reason="the original-LLaVA backend (llava-torch) is not installed")


def _hf_backend() -> bool:
    import transformers

    from llava_avc.backends.versions import HF_OLDEST, version_tuple

    return version_tuple(transformers.__version__) >= HF_OLDEST


needs_hf = pytest.mark.skipif(not _hf_backend(), reason="the llava-hf backend needs transformers >= 4.57")


def run(*argv, env=None, cwd=None, timeout=120, executable_args=("-m", "llava_avc"), preexec_fn=None):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    environment = {key: value for key, value in environment.items() if value is not None}
    command = [sys.executable, *executable_args, *[os.fsencode(a) if isinstance(a, bytes) else str(a) for a in argv]]
    return subprocess.run(command, capture_output=True, env=environment, cwd=cwd, timeout=timeout,
                          preexec_fn=preexec_fn)


def ctrl_c_reaches_python() -> None:
    """In the child, before Python starts: SIGINT back to its default. A test suite started in the background
    (`pytest &`, a CI runner) inherits SIGINT ignored, and Python then never turns Ctrl-C into
    KeyboardInterrupt; a user at a terminal has the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assert_one_line_error(proc, code: int, pattern: str) -> str:
    """The exit status, no traceback, and stderr one `llava-avc ...: error:` line (or a usage block
    whose last line is argparse's error) matching `pattern`; an error after the model loaded may follow
    eval's one "loaded ..." progress line."""
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("loaded ")]
    assert lines, "nothing on stderr"
    if lines[0].startswith("usage:"):
        assert len(lines) == 2, stderr  # argparse: a short usage line, then the error
    else:
        assert len(lines) == 1, stderr
    assert re.search(pattern, lines[-1]), f"{pattern!r} not in {lines[-1]!r}"
    assert lines[-1].startswith(("llava-avc", "usage:")), lines[-1]
    return lines[-1]


# ------------------------------------------------------------------------------------- the world


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: nothing listens there


def _fake_checkpoint(path: Path, config: dict) -> Path:
    """A checkpoint with a config and no weights: any case that got as far as loading would fail with
    another message (so a passing case proves the check ran before loading)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _answers(folder: Path, benchmark: str, questions: list) -> Path:
    """An answers file as `eval` writes it: (question id, category) pairs, every answer "Yes"."""
    folder.mkdir()
    records = [{"question_id": qid, "prompt": "Is there a dog?", "text": "Yes", "answer_id": str(qid), "model_id": "m",
                "metadata": {"config_hash": "h", "benchmark": benchmark, "method": "none", "protocol": "paper",
                             "image": "x.jpg", "label": "yes", "category": category}} for qid, category in questions]
    (folder / "answers.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return folder / "answers.jsonl"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files for the table: checkpoints (fake, damaged), images (good, tiny, truncated, not an
    image), question files (good, empty, wrong types) and run folders."""
    from PIL import Image

    from llava_avc.testing.tiny import sample_image

    root = tmp_path_factory.mktemp("bad")
    w = {"root": root}
    w["ckpt"] = _fake_checkpoint(root / "llava-fake", {"model_type": "llava_llama", "mm_vision_tower": "openai/clip",
                                                       "mm_hidden_size": 8, "architectures": ["LlavaLlamaForCausalLM"]})
    w["hf_ckpt"] = _fake_checkpoint(root / "llava-fake-hf", {"model_type": "llava"})
    broken = _fake_checkpoint(root / "llava-broken-config", {})
    (broken / "config.json").write_text('{\n  "model_type": "llava_llama",\n')
    w["broken_config"] = broken
    empty = _fake_checkpoint(root / "llava-empty-config", {})
    (empty / "config.json").write_text("")
    w["empty_config"] = empty
    tokenizer = _fake_checkpoint(root / "llava-broken-tokenizer", json.loads((w["ckpt"] / "config.json").read_text()))
    (tokenizer / "tokenizer_config.json").write_text("{'add_bos_token': True}")
    w["broken_tokenizer"] = tokenizer
    truncated = _fake_checkpoint(root / "llava-truncated", json.loads((w["ckpt"] / "config.json").read_text()))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    (truncated / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 1000)
    (truncated / "tokenizer.model").write_bytes(b"\0")  # convert reads it only after the weights' check
    w["truncated"] = truncated
    w["not_a_checkpoint"] = root / "llava-empty-dir"
    w["not_a_checkpoint"].mkdir()

    photo = sample_image()
    w["image"] = root / "photo.jpg"
    photo.save(w["image"])
    w["tiny_image"] = root / "one.png"
    Image.new("RGB", (1, 1)).save(w["tiny_image"])
    w["truncated_image"] = root / "truncated.jpg"
    data = w["image"].read_bytes()
    w["truncated_image"].write_bytes(data[: len(data) // 2])
    w["text_file"] = root / "notes.jpg"
    w["text_file"].write_text("not an image\n")
    w["file"] = root / "a-file.txt"
    w["file"].write_text("x\n")

    images = root / "val2014"
    images.mkdir()
    for name in dict.fromkeys(json.loads(line)["image"] for line in POPE_LINES):
        photo.resize((64, 64)).save(images / name)
    w["images"] = images
    w["questions"] = root / "coco_pope_random.json"
    w["questions"].write_text("\n".join(POPE_LINES) + "\n")
    w["empty_questions"] = root / "empty.json"
    w["empty_questions"].write_text("")
    for name, change in (("text_null", {"text": None}), ("text_int", {"text": 123}), ("id_list", {"question_id": [1]}),
                         ("image_null", {"image": None}), ("label_int", {"label": 5}), ("text_blank", {"text": " "})):
        records = [json.loads(line) for line in POPE_LINES]
        records[4].update(change)
        w[name] = root / f"{name}.json"
        w[name].write_text("".join(json.dumps(record) + "\n" for record in records))
    records = [json.loads(line) for line in POPE_LINES]
    records[4]["text"] = "<image>\n" + records[4]["text"]
    w["text_placeholder"] = root / "text_placeholder.json"
    w["text_placeholder"].write_text("".join(json.dumps(record) + "\n" for record in records))
    records = [json.loads(line) for line in POPE_LINES]
    del records[4]["label"]
    w["no_label"] = root / "no_label.json"
    w["no_label"].write_text("".join(json.dumps(record) + "\n" for record in records))
    w["amber_string_ids"] = root / "query_strings.json"
    w["amber_string_ids"].write_text(json.dumps([{"id": "q1", "image": "x.jpg", "query": "Describe this image."}]))
    w["not_json"] = root / "not_json.json"
    w["not_json"].write_text(POPE_LINES[0] + "\n{not json\n")
    w["pope_answers"] = _answers(root / "pope-run", "pope", [(json.loads(line)["question_id"], "random")
                                                               for line in POPE_LINES])
    w["pope_answers_as_mme"] = _answers(root / "pope-as-mme", "mme", [(qid, str(qid)) for qid in (1, 2)])
    w["port"] = _closed_port()
    return w


@dataclass
class Case:
    """One bad input: argv (strings; "{key}" is replaced by the world's path), the exit status and a
    regular expression of the one-line message; `env` adds environment variables; `out` names a run
    folder that must not be created, or stay byte for byte as it was."""

    id: str
    argv: tuple
    pattern: str
    code: int = 2
    env: dict = field(default_factory=dict)
    needs: str = ""  # "llava" / "nollava": the original backend is (not) installed; "hf": the llava-hf backend is;
    # "nocuda": torch finds no CUDA GPU
    out: str = ""  # "new": the run folder must not be created; "kept": an existing one must not change


ASK = ("ask", "--model-path", "{ckpt}", "--image", "{image}", "--query", "Is there a dog?", "--device", "cpu")
EVAL = ("eval", "pope", "--model-path", "{ckpt}", "--image-folder", "{images}", "--question-file", "{questions}",
        "--device", "cpu")


def _ask(*extra, **changes):
    argv = list(ASK)
    for key, value in changes.items():
        argv[argv.index(f"--{key.replace('_', '-')}") + 1] = value
    return tuple(argv) + extra


def _eval(*extra, **changes):
    argv = list(EVAL)
    for key, value in changes.items():
        argv[argv.index(f"--{key.replace('_', '-')}") + 1] = value
    return tuple(argv) + extra


CASES = [
    # ask: sampling settings (the same rules as generate(..., avc=...))
    Case("ask-temperature-inf", _ask("--temperature", "inf"), r"--temperature \(=inf\) must be a finite number >= 0"),
    Case("ask-temperature-nan", _ask("--temperature", "nan"), r"--temperature \(=nan\) must be a finite"),
    Case("ask-temperature-negative", _ask("--temperature", "-1"), r"--temperature \(=-1.0\) must be"),
    Case("ask-max-new-tokens-0", _ask("--max-new-tokens", "0"), r"--max-new-tokens \(=0\) must be an integer >= 1"),
    Case("ask-max-new-tokens-negative", _ask("--max-new-tokens", "-1"), r"--max-new-tokens \(=-1\) must be"),
    Case("ask-top-p-2", _ask("--temperature", "1", "--top-p", "2"), r"--top-p \(=2.0\) must be in \(0, 1\]"),
    Case("ask-top-p-0", _ask("--temperature", "1", "--top-p", "0"), r"--top-p \(=0.0\) must be in \(0, 1\]"),
    # ask: the question
    Case("ask-query-not-utf8", _ask(query=b"is \xff\xfe there"), r"--query is not valid UTF-8 text \(bytes"),
    Case("ask-query-blank", _ask(query="   "), r"--query is empty"),
    Case("ask-query-image-placeholders", _ask(query="<image> what is this <image>"),
         r"--query \(='<image> what is this <image>'\) contains '<image>' 2 time\(s\); llava-avc puts the image "
         r"before the question itself, once"),
    # ask: the image and the heatmap
    Case("ask-image-directory", _ask(image="{root}"), r"is a directory, not an image file"),
    Case("ask-image-missing", _ask(image="{root}/missing.jpg"), r"image file '.*missing.jpg' does not exist"),
    Case("ask-image-1x1", _ask(image="{tiny_image}"), r"one.png' is 1x1 pixels; images need at least 2 pixels"),
    Case("ask-image-truncated", _ask(image="{truncated_image}"), r"truncated.jpg' cannot be read .*copy or download"),
    Case("ask-image-not-an-image", _ask(image="{text_file}"), r"notes.jpg' cannot be read: it is not an image PIL can read"),
    Case("ask-heatmap-directory", _ask("--heatmap", "{root}"), r"--heatmap '.*' is a directory"),
    Case("ask-heatmap-under-a-file", _ask("--heatmap", "{file}/blind.png"), r"a-file.txt' is a file, not a folder"),
    Case("ask-heatmap-not-png", _ask("--heatmap", "{root}/hm.txt"),
         r"--heatmap \(='.*hm.txt'\) must name a .png file: the picture is written as PNG; e.g. --heatmap hm.png"),
    # ask: the device
    Case("ask-device-tpu", _ask(device="tpu"), r"--device \(='tpu'\) is not a device llava-avc can load a model on"),
    Case("ask-device-cuda-without-gpu", _ask(device="cuda"), r"--device cuda, but torch finds no CUDA GPU",
         needs="nocuda"),
    Case("ask-device-cuda-7-without-gpu", _ask(device="cuda:7"), r"--device cuda:7, but torch finds no CUDA GPU",
         needs="nocuda"),
    # ask: the checkpoint
    Case("ask-model-truncated-safetensors", _ask(model_path="{truncated}"),
         r"model.safetensors is damaged \(1075 bytes of the 4075 its header describes: truncated\).*download"),
    Case("ask-model-broken-config", _ask(model_path="{broken_config}"),
         r"config.json is damaged \(not valid JSON: .* at line 3 column 1\).*download"),
    Case("ask-model-empty-config", _ask(model_path="{empty_config}"), r"config.json is damaged \(an empty JSON file\)"),
    Case("ask-model-broken-tokenizer-config", _ask(model_path="{broken_tokenizer}"),
         r"tokenizer_config.json is damaged \(not valid JSON"),
    Case("ask-model-missing-path", _ask(model_path="{root}/nowhere/llava-x"), r"does not exist"),
    Case("ask-model-not-a-checkpoint", _ask(model_path="{not_a_checkpoint}"),
         r"llava-empty-dir' is not a checkpoint folder: it has no config.json .*pass the folder that holds them"),
    Case("ask-model-uncached-hub-id-offline", _ask(model_path=UNCACHED_ID),
         rf"--model-path '{UNCACHED_ID}' is not in the local Hugging Face cache and the hub cannot be reached "
         r"\(HF_HUB_OFFLINE=1\); download it once .*\(hf download .*or pass a local checkpoint directory"),
    Case("ask-model-uncached-hub-id-unreachable", _ask(model_path=UNCACHED_ID),
         r"is not in the local Hugging Face cache and the hub cannot be reached \(no connection to "
         r"http://127.0.0.1:\d+", env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
                                       "HF_ENDPOINT": "http://127.0.0.1:{port}"}),
    # ask: flags
    Case("ask-two-methods", _ask("--method", "avc", "--use_cd"), r"conflicting method flags: avc, vcd"),
    Case("ask-bad-alpha", _ask("--avc-alpha", "nan"), r"`alpha` \(=nan\)"),
    Case("ask-4bit-and-8bit", _ask("--load-4bit", "--load-8bit"), r"not allowed with argument"),
    Case("ask-no-query", tuple(a for a in ASK if a not in ("--query", "Is there a dog?")),
         r"the following arguments are required: --query"),
    Case("ask-flag-of-eval", _ask("--seeds", "1,2"),
         r"^llava-avc ask: error: unrecognized arguments: --seeds 1,2 \(see llava-avc ask --help\)"),
    Case("ask-conv-mode-unknown-original", _ask("--conv-mode", "bogus"),
         r"--conv-mode \(='bogus'\) is not one of LLaVA's conversation templates", needs="llava"),
    Case("ask-conv-mode-unknown-llava-hf", _ask("--conv-mode", "bogus", model_path="{hf_ckpt}"),
         r"--conv-mode \(='bogus'\) is not available for llava-hf checkpoints; choose 'chat-template'", needs="hf"),
    # eval: the question file (every record's types checked before the model loads)
    Case("eval-question-file-directory", _eval(question_file="{root}"), r"--question-file .* is a directory",
         out="new"),
    Case("eval-question-file-empty", _eval(question_file="{empty_questions}"), r"empty.json holds no questions",
         out="new"),
    Case("eval-text-null", _eval(question_file="{text_null}"), r"text_null.json, line 5: 'text' is None \(NoneType\); "
         r"it must be a string", out="new"),
    Case("eval-text-int", _eval(question_file="{text_int}"), r"line 5: 'text' is 123 \(int\); it must be a string",
         out="new"),
    Case("eval-text-blank", _eval(question_file="{text_blank}"), r"line 5: 'text' is empty", out="new"),
    Case("eval-question-id-list", _eval(question_file="{id_list}"),
         r"id_list.json, line 5: 'question_id' is \[1\] \(list\); it must be an integer or a string", out="new"),
    Case("eval-image-null", _eval(question_file="{image_null}"), r"line 5: 'image' is None", out="new"),
    Case("eval-label-int", _eval(question_file="{label_int}"), r"line 5: 'label' is 5 \(int\)", out="new"),
    Case("eval-not-json", _eval(question_file="{not_json}"), r"not_json.json, line 2: not valid JSON", out="new"),
    Case("eval-text-with-image-placeholder", _eval(question_file="{text_placeholder}"),
         r"text_placeholder.json, line 5: 'text' contains '<image>' 1 time\(s\)", out="new"),
    Case("eval-pope-without-label", _eval(question_file="{no_label}"),
         r"no_label.json, line 5: POPE question \d+ has no 'label'; POPE is scored against", out="new"),
    Case("eval-mme-given-a-pope-file", ("eval", "mme") + _eval()[2:],
         r"question \d+ belongs to no MME sub-task .* is not an MME question source", out="new"),
    Case("eval-amber-string-ids", ("eval", "amber") + _eval(question_file="{amber_string_ids}")[2:],
         r"AMBER query id 'q1' is not a positive integer", out="new"),
    Case("eval-conv-mode-unknown-llava-hf", _eval("--conv-mode", "bogus", model_path="{hf_ckpt}"),
         r"--conv-mode \(='bogus'\) is not available for llava-hf checkpoints", needs="hf", out="new"),
    # eval: options, folders, device, checkpoint
    Case("eval-device-cuda-without-gpu", _eval(device="cuda"), r"--device cuda, but torch finds no CUDA GPU",
         needs="nocuda", out="new"),
    Case("eval-device-tpu", _eval(device="tpu"), r"--device \(='tpu'\) is not a device", out="new"),
    Case("eval-device-tpu-existing-run", _eval(device="tpu"), r"--device \(='tpu'\) is not a device", out="kept"),
    Case("eval-limit-0", _eval("--limit", "0"), r"--limit \(=0\) must be at least 1", out="new"),
    Case("eval-batch-size-0", _eval("--batch-size", "0"), r"--batch-size \(=0\) must be at least 1", out="new"),
    Case("eval-max-new-tokens-0", _eval("--max-new-tokens", "0"), r"--max-new-tokens \(=0\) must be at least 1",
         out="new"),
    Case("eval-chunk-idx-out-of-range", _eval("--chunk-idx", "3"), r"--chunk-idx \(=3\) must be in 0..0", out="new"),
    Case("eval-image-folder-missing", _eval(image_folder="{root}/nowhere"), r"--image-folder .* is not a folder",
         out="new"),
    Case("eval-out-is-a-file", _eval(), r"--out .* must be a folder, but .*a-file.txt' is a file", out="file"),
    Case("eval-unknown-benchmark", ("eval", "popx") + _eval()[2:], r"unknown benchmark 'popx'.*Did you mean 'pope'",
         out="new"),
    Case("eval-unknown-protocol", _eval("--protocol", "foo"), r"unknown protocol 'foo'", out="new"),
    Case("eval-model-uncached-hub-id", _eval(model_path=UNCACHED_ID), r"is not in the local Hugging Face cache",
         out="new"),
    Case("eval-model-truncated-safetensors", _eval(model_path="{truncated}"), r"model.safetensors is damaged",
         out="new"),
    Case("eval-model-truncated-safetensors-existing-run", _eval(model_path="{truncated}"),
         r"model.safetensors is damaged", out="kept"),
    # score
    Case("score-missing-answers", ("score", "pope", "--answers-file", "{root}/nowhere.jsonl"), r"nowhere"),
    Case("score-unknown-benchmark", ("score", "popx", "--answers-file", "{questions}"), r"unknown benchmark 'popx'"),
    Case("score-no-answers-flag", ("score", "pope"), r"one of the arguments --answers-file --compare is required"),
    Case("score-mme-answers-of-no-mme-sub-task", ("score", "mme", "--answers-file", "{pope_answers_as_mme}"),
         r"the answer to question 1 belongs to no MME sub-task \(category '1'.*these are not MME answers"),
    Case("score-chart-not-png", ("score", "pope", "--answers-file", "{pope_answers}", "--chart", "{root}/c.txt"),
         r"--chart \(='.*c.txt'\) must name a .png file"),
    Case("score-labels-without-compare", ("score", "pope", "--answers-file", "{pope_answers}", "--labels", "a"),
         r"--labels \(=a\) names the runs of --compare; with --answers-file drop it"),
    # merge
    Case("merge-out-missing", ("merge", "--out", "{root}/nowhere"), r"--out \(='.*nowhere'\) does not exist; give the "
         r"run folder"),
    Case("merge-out-is-a-file", ("merge", "--out", "{file}"), r"--out .* must be a folder"),
    Case("merge-no-chunks", ("merge", "--out", "{images}"), r"no chunk answer files"),
    # run (LLaVA's own scripts)
    Case("run-no-module", ("run",), r"MODULE is missing", needs="llava"),
    Case("run-unknown-module", ("run", "llava.nonexistent", "--device", "cpu"), r"no module named 'llava.nonexistent'",
         needs="llava"),
    Case("run-unknown-plugin-flag", ("run", "llava.eval.run_llava", "--bogus"), r"unrecognized arguments: --bogus",
         needs="llava"),
    Case("run-record-every-0", ("run", "llava.eval.run_llava", "--record-every", "0"), r"--record-every \(=0.0\)",
         needs="llava"),
    Case("run-max-new-tokens-cap-0", ("run", "llava.eval.run_llava", "--max-new-tokens-cap", "0"),
         r"--max-new-tokens-cap must be >= 1", needs="llava"),
    Case("run-device-tpu", ("run", "llava.eval.run_llava", "--device", "tpu"), r"invalid choice: 'tpu'"),
    Case("run-without-llava", ("run", "llava.eval.run_llava", "--device", "cuda", "--", "--model-path", "x"),
         r"llava-avc run runs the original LLaVA's scripts, and this environment has no original LLaVA", needs="nollava"),
    Case("run-script-default-model-offline", ("run", "llava.eval.run_llava", "--device", "cpu", "--", "--image-file",
                                              "{image}", "--query", "q"),
         r"--model-path \(not given after `--`, so llava.eval.run_llava's default\) 'facebook/opt-350m' is not in the "
         r"local Hugging Face cache", needs="llava"),
    Case("run-uncached-model-unreachable", ("run", "llava.eval.run_llava", "--device", "cpu", "--", "--model-path",
                                            UNCACHED_ID, "--image-file", "{image}", "--query", "q"),
         r"is not in the local Hugging Face cache and the hub cannot be reached \(no connection",
         env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:{port}"},
         needs="llava"),
    Case("run-damaged-model", ("run", "llava.eval.model_vqa", "--device", "cpu", "--", "--model-path", "{truncated}",
                               "--answers-file", "{root}/run-answers.jsonl"), r"model.safetensors is damaged",
         needs="llava"),
    # convert
    Case("convert-damaged-weights", ("convert", "--to", "hf", "{truncated}", "{root}/converted"),
         r"model.safetensors is damaged"),
    # doctor
    Case("doctor-unknown-flag", ("doctor", "--bogus"), r"unrecognized arguments: --bogus"),
]


def _fill(value, world):
    if isinstance(value, bytes):
        return value
    return re.sub(r"\{(\w+)\}", lambda match: str(world[match.group(1)]), value)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _snapshot(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


#: Run as `python -m llava_avc` in a fresh process: the first case of each command (the real entry point) and
#: every case that sets environment variables (read at import time by the hub libraries).
SUBPROCESS_CASES = ({case.id for case in CASES if case.env}
                    | {next(c.id for c in CASES if c.argv[0] == command) for command in {c.argv[0] for c in CASES}})


@dataclass
class _Finished:
    """What `assert_one_line_error` reads of a finished command."""

    returncode: int
    stderr: bytes


def _run_in_process(argv: list, cwd: Path, capfd, monkeypatch) -> _Finished:
    """`llava-avc ARGV` through the CLI's `main` in this process (argparse's usage errors exit by SystemExit)."""
    from llava_avc.interfaces.cli import main

    monkeypatch.chdir(cwd)
    capfd.readouterr()
    try:
        code = main([os.fsdecode(item) if isinstance(item, bytes) else str(item) for item in argv])
    except SystemExit as stop:
        code = stop.code
    return _Finished(code, capfd.readouterr().err.encode("utf-8", "surrogateescape"))


def test_the_table_has_at_least_fifty_bad_inputs_across_every_command():
    assert len(CASES) >= 50
    assert {case.argv[0] for case in CASES} >= {"ask", "eval", "score", "run", "merge", "doctor"}
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_is_one_line_and_an_exit_status(case, world, tmp_path, capfd, monkeypatch):
    if case.needs == "llava" and not LLAVA:
        pytest.skip("the original-LLaVA backend (llava-torch) is not installed")
    if case.needs == "nollava" and LLAVA:
        pytest.skip("the original-LLaVA backend (llava-torch) is installed here")
    if case.needs == "hf" and not _hf_backend():
        pytest.skip("the llava-hf backend needs transformers >= 4.57")
    if case.needs == "nocuda" and _cuda():
        pytest.skip("this machine has a CUDA GPU")
    argv = [_fill(item, world) for item in case.argv]
    out = tmp_path / "run"
    before = None
    if case.out == "kept":
        out.mkdir()
        (out / "answers.jsonl").write_text('{"question_id": 1, "text": "yes"}\n')
        (out / "run.json").write_text('{"config_hash": "0123456789ab"}\n')
        before = _snapshot(out)
    if case.out:
        argv += ["--out", str(world["file"]) if case.out == "file" else str(out)]
    env = {key: None if value is None else _fill(value, world) for key, value in case.env.items()}
    started = time.monotonic()
    if case.id in SUBPROCESS_CASES:
        proc = run(*argv, env=env, cwd=tmp_path, timeout=60)
    else:
        proc = _run_in_process(argv, tmp_path, capfd, monkeypatch)
    assert_one_line_error(proc, case.code, case.pattern)
    if "hub cannot be reached" in case.pattern:
        assert time.monotonic() - started < 30  # no minute of retries (the hub check answers in seconds)
    if case.out == "new":
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    if case.out == "kept":
        assert _snapshot(out) == before
    if case.out == "file":
        assert world["file"].read_text() == "x\n"
    assert not (world["root"] / "run-answers.jsonl").exists()


# ------------------------------------------------------------------------------- --help is light


@pytest.mark.parametrize("command", ["", "ask", "run", "eval", "score", "merge", "convert", "doctor"])
def test_help_imports_neither_torch_nor_transformers(command):
    """`llava-avc [COMMAND] --help` through the real entry point (the package's __main__), then the
    modules the process imported: neither torch nor transformers (a model is not used)."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['llava-avc'] + {[command] if command else []!r} + ['--help']\n"
            "try:\n    runpy.run_module('llava_avc', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as stop:\n    assert stop.code == 0, stop.code\n"
            "heavy = sorted(name for name in ('torch', 'transformers', 'llava') if name in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    proc = run(executable_args=("-c", code))
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "HEAVY []" in stderr, stderr
    assert b"usage: llava-avc" in proc.stdout


# -------------------------------------------------------------------- the doctor and --load-4bit


def test_the_doctor_reports_exactly_what_load_4bit_does_and_nothing_else(world):
    """`doctor`'s 4-bit line is the loaders' own verdict on this machine (refused: the same reason
    `ask --load-4bit` gives); nothing but the report is printed."""
    proc = run("doctor", "--json")
    assert proc.stderr == b"", proc.stderr.decode()
    check = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["bnb-4bit"]
    asked = run(*[_fill(item, world) for item in _ask("--load-4bit")])
    stderr = asked.stderr.decode()
    if check["ok"]:
        assert "--load-4bit works on" in check["detail"]
        assert "4-bit loading needs" not in stderr and "bitsandbytes" not in stderr, stderr
    else:
        reason = check["detail"].split(": ", 1)[1]
        assert_one_line_error(asked, 2, re.escape(reason))


# ------------------------------------------------------------------- cases with a loaded model


def _long_query(words: int) -> str:
    return " ".join(["word"] * words)


@needs_llava
def test_method_none_refuses_a_prompt_longer_than_the_context_as_the_methods_do(tiny_llava_dir, world):
    messages = []
    for method in ("none", "avc"):
        proc = run(*[_fill(item, world) for item in _ask("--method", method, "--max-new-tokens", "2",
                                                          model_path=str(tiny_llava_dir),
                                                          query=_long_query(2500))])
        messages.append(assert_one_line_error(proc, 2, r"the prompt takes \d+ positions with the image's tokens, "
                                              r"but LLaVA's context \(tokenizer_model_max_length\) is 2048; upstream "
                                              r"LLaVA would cut the prompt there silently"))
    assert messages[0] == messages[1]


@needs_hf
def test_method_none_refuses_a_prompt_longer_than_the_context_on_llava_hf(tiny_hf_dir, world):
    proc = run(*[_fill(item, world) for item in _ask("--method", "none", "--max-new-tokens", "2",
                                                      model_path=str(tiny_hf_dir), query=_long_query(4000))])
    assert_one_line_error(proc, 2, r"the prompt takes \d+ positions with the image's tokens, but the language "
                          r"model's context \(max_position_embeddings\) is 4096")


@needs_llava
def test_a_checkpoint_this_environment_cannot_serve_is_one_line(tiny_llava_dir, world):
    """An original checkpoint where llava is missing, or a llava-hf one on transformers < 4.57."""
    if _hf_backend():
        pytest.skip("this environment serves both formats")
    proc = run(*[_fill(item, world) for item in _ask(model_path="{hf_ckpt}")])
    assert_one_line_error(proc, 2, r"is a llava-hf checkpoint; the llava-hf backend needs transformers >= 4.57")


def _eval_tiny(tiny_llava_dir, world, out, *extra, tokens="2"):
    return [_fill(item, world) for item in _eval("--max-new-tokens", tokens, "--out", str(out), *extra,
                                                 model_path=str(tiny_llava_dir))]


@needs_llava
def test_ctrl_c_in_eval_keeps_every_answer_and_says_how_to_resume(tiny_llava_dir, world, tmp_path):
    out = tmp_path / "run"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llava_avc", *_eval_tiny(tiny_llava_dir, world, out, tokens="48")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment,
                            preexec_fn=ctrl_c_reaches_python)
    answers = out / "answers.jsonl"
    deadline = time.monotonic() + 300
    while not (answers.is_file() and answers.read_bytes().count(b"\n") >= 1) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    stderr = stderr.decode()
    saved = answers.read_bytes().count(b"\n")
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (f"llava-avc eval: interrupted; {saved} answer{'s are' if saved != 1 else ' is'} "
                                               f"saved in {answers}; rerun the same command to resume"), stderr
    assert 1 <= saved < 12
    resumed = run(*_eval_tiny(tiny_llava_dir, world, out, tokens="48"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert f"{12 - saved} new answers, {saved} already there, 12 questions" in resumed.stdout.decode()

    # a rerun that adds nothing leaves the run record as it is (it describes the answers file)
    record = (out / "run.json").read_bytes()
    again = run(*_eval_tiny(tiny_llava_dir, world, out, "--limit", "5", tokens="48"))
    assert again.returncode == 0, again.stderr.decode()
    assert "0 new answers, 5 already there" in again.stdout.decode()
    assert (out / "run.json").read_bytes() == record and json.loads(record)["limit"] is None


#: `llava-avc ask` whose process sends itself SIGINT (what Ctrl-C does) in the 3rd use of the model's lm_head, i.e.
#: mid-generation, whatever the machine's speed and wherever the tiny model's answer would end.
_ASK_INTERRUPTED = r"""
import os, signal, sys
from llava_avc.backends.llava.pipeline import LlavaPipeline
from llava_avc.interfaces.cli import main

original = LlavaPipeline.generate
forwards = []

def interrupt_mid_generation(model, args):
    forwards.append(1)
    if len(forwards) == 3:
        os.kill(os.getpid(), signal.SIGINT)

def generate(self, *args, **kwargs):
    self.model.lm_head.register_forward_pre_hook(interrupt_mid_generation)
    return original(self, *args, **kwargs)

LlavaPipeline.generate = generate
sys.exit(main(sys.argv[1:]))
"""


@needs_llava
def test_ctrl_c_in_ask_is_one_line_and_exit_130(tiny_llava_dir, world):
    argv = [_fill(item, world) for item in _ask("--max-new-tokens", "64", model_path=str(tiny_llava_dir))]
    proc = run(*argv, executable_args=("-c", _ASK_INTERRUPTED), timeout=300, preexec_fn=ctrl_c_reaches_python)
    assert_one_line_error(proc, 130, r"^llava-avc ask: interrupted; no answer was produced and nothing was written")


@needs_llava
def test_a_full_disk_names_the_answers_file_and_keeps_the_run_folder_clean(tiny_llava_dir, world, tmp_path):
    """The answers file cannot be written (ENOSPC, simulated in the writer): the message names it, says
    to free space and rerun; the empty answers file this run created is removed again."""
    out = tmp_path / "run"
    code = ("import errno, sys\n"
            "from llava_avc.eval import answers\n"
            "def full(self, record):\n    raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "answers.AnswerWriter.write = full\n"
            "from llava_avc.interfaces.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = run(*_eval_tiny(tiny_llava_dir, world, out), executable_args=("-c", code), timeout=300)
    assert_one_line_error(proc, 2, rf"cannot write {re.escape(str(out / 'answers.jsonl'))}: No space left on device; "
                          r"free some disk space \(or write elsewhere\) and rerun the same command")
    assert not (out / "answers.jsonl").exists()


@needs_llava
def test_ask_heatmap_to_a_full_device_names_the_file(tiny_llava_dir, world, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    full = tmp_path / "blind.png"
    full.symlink_to("/dev/full")  # a .png path on a full device
    proc = run(*[_fill(item, world) for item in _ask("--heatmap", str(full), "--max-new-tokens", "2",
                                                      model_path=str(tiny_llava_dir))])
    assert_one_line_error(proc, 2, rf"cannot write the heatmap {re.escape(str(full))} \(No space left on device\); "
                                   r"free some disk")


# ------------------------------------------------------------------------------- the Python API

#: Runs one call and prints [name, "no error" | "<exception type>: <message>"] as a JSON line.
_ATTEMPT = r"""
def attempt(name, call):
    try:
        call()
        print(json.dumps([name, "no error"]))
    except Exception as error:
        print(json.dumps([name, f"{type(error).__name__}: {error}"]))
"""

_API_SCRIPT = r"""
import json, sys
import torch
import llava_avc
from llava_avc import AVCConfig, VCDConfig
from llava_avc.backends.llava.loading import load_model
from llava_avc.backends.llava.prompts import build_prompt, prepare_images, prompt_ids
from llava_avc.testing.tiny import sample_image

tokenizer, model, processor, _ = load_model(sys.argv[1], device="cpu")
image = sample_image()
ids = prompt_ids(tokenizer, build_prompt("Is there a dog?", "llava_v1", model.config))[None]
images = prepare_images([image], processor, model)
common = dict(images=images, image_sizes=[image.size])

{attempt}

attempt("unpatched-avc", lambda: model.generate(ids, avc=AVCConfig(), max_new_tokens=2, **common))
attempt("max-new-tokens-0", lambda: llava_avc.generate(model, ids, avc=AVCConfig(), max_new_tokens=0, **common))
attempt("temperature-inf", lambda: llava_avc.generate(model, ids, avc=AVCConfig(), do_sample=True, temperature=float("inf"), max_new_tokens=2, **common))
attempt("temperature-nan-greedy", lambda: llava_avc.generate(model, ids, vcd=VCDConfig(), do_sample=False, temperature=float("nan"), max_new_tokens=2, **common))
attempt("top-p-2", lambda: llava_avc.generate(model, ids, avc=AVCConfig(), do_sample=True, top_p=2.0, max_new_tokens=2, **common))
attempt("top-p-0", lambda: llava_avc.generate(model, ids, avc=AVCConfig(), do_sample=True, top_p=0.0, max_new_tokens=2, **common))
attempt("top-k-negative", lambda: llava_avc.generate(model, ids, avc=AVCConfig(), do_sample=True, top_k=-1, max_new_tokens=2, **common))
attempt("beams", lambda: llava_avc.generate(model, ids, avc=AVCConfig(), num_beams=2, max_new_tokens=2, **common))
attempt("two-methods", lambda: llava_avc.generate(model, ids, avc=AVCConfig(), vcd=VCDConfig(), max_new_tokens=2, **common))
attempt("config-nan", lambda: AVCConfig(alpha=float("nan")))
attempt("device-tpu", lambda: load_model(sys.argv[1], device="tpu"))
attempt("good", lambda: llava_avc.generate(model, ids, avc=AVCConfig(), max_new_tokens=2, **common))
"""

_API_EXPECTED = {
    "unpatched-avc": r"^ValueError: The following `model_kwargs` are not used by the model: \['avc'\]",
    "max-new-tokens-0": r"^(UserError: `max_new_tokens` \(=0\) must be an integer >= 1|ValueError: `max_new_tokens` "
                        r"must be greater than 0, but is 0)",
    "temperature-inf": r"^UserError: `temperature` \(=inf\) must be a finite number >= 0",
    "temperature-nan-greedy": r"^UserError: `temperature` \(=nan\) must be a finite number >= 0",
    "top-p-2": r"^UserError: `top_p` \(=2.0\) must be in \(0, 1\]",
    "top-p-0": r"^UserError: `top_p` \(=0.0\) must be in \(0, 1\]",
    "top-k-negative": r"^UserError: .*`top_k` \(=-1\)",
    "beams": r"^UserError: `num_beams` \(=2\) must be 1 with avc=: contrastive",
    "two-methods": r"^UserError: .*at most one",
    "config-nan": r"^UserError: AVCConfig: `alpha` \(=nan\) must be a finite",
    "device-tpu": r"^UserError: --device \(='tpu'\) is not a device",
    "good": r"^no error$",
}


@needs_llava
def test_the_python_api_refuses_bad_generate_arguments_with_one_line(tiny_llava_dir):
    proc = run(str(tiny_llava_dir), executable_args=("-c", _API_SCRIPT.replace("{attempt}", _ATTEMPT)), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    results = dict(json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("["))
    assert set(results) == set(_API_EXPECTED)
    for name, pattern in _API_EXPECTED.items():
        assert re.search(pattern, results[name]), (name, results[name])
        assert "\n" not in results[name] and "avc==" not in results[name], (name, results[name])


_HF_API_SCRIPT = r"""
import json, sys
import llava_avc
from llava_avc import AVCConfig
from llava_avc.backends.hf.pipeline import HFPipeline
from llava_avc.testing.tiny import sample_image

pipeline = HFPipeline.load(sys.argv[1], device="cpu")
model = pipeline.model
inputs = pipeline.inputs(["Is there a dog?"], [sample_image()])

{attempt}

attempt("avc-without-custom-generate", lambda: model.generate(**inputs, avc=AVCConfig(), max_new_tokens=2))
attempt("top-p-2", lambda: llava_avc.generate(model, **inputs, avc=AVCConfig(), do_sample=True, top_p=2.0, max_new_tokens=2))
attempt("temperature-inf", lambda: llava_avc.generate(model, **inputs, avc=AVCConfig(), do_sample=True, temperature=float("inf"), max_new_tokens=2))
attempt("max-new-tokens-0", lambda: llava_avc.generate(model, **inputs, avc=AVCConfig(), max_new_tokens=0))
attempt("good", lambda: llava_avc.generate(model, **inputs, avc=AVCConfig(), max_new_tokens=2))
"""


@needs_hf
def test_the_python_api_on_llava_hf_refuses_bad_generate_arguments_with_one_line(tiny_hf_dir):
    proc = run(str(tiny_hf_dir), executable_args=("-c", _HF_API_SCRIPT.replace("{attempt}", _ATTEMPT)), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    results = dict(json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("["))
    expected = {
        "avc-without-custom-generate": r"^ValueError: The following `model_kwargs` are not used by the model: "
                                       r"\['avc'\]",
        "top-p-2": r"^UserError: `top_p` \(=2.0\) must be in \(0, 1\]",
        "temperature-inf": r"^UserError: `temperature` \(=inf\) must be a finite number >= 0",
        "max-new-tokens-0": r"^ValueError: .*`max_new_tokens`.*0",
        "good": r"^no error$",
    }
    assert set(results) == set(expected)
    for name, pattern in expected.items():
        assert re.search(pattern, results[name]), (name, results[name])
        assert "\n" not in results[name], (name, results[name])


# ------------------------------------------------------------------- checkpoints that move


@needs_llava
def test_a_copied_or_moved_tiny_checkpoint_loads_its_own_vision_tower(tmp_path):
    """config.json records the tower's absolute path; a copy must not read the original's tower (here
    rebuilt with other weights) and a moved one must not fail with "Unknown vision tower": through
    load_model and through LLaVA's loader under the patch (the launcher's route)."""
    import torch

    import llava_avc
    from llava.mm_utils import get_model_name_from_path
    from llava.model import builder

    from llava_avc.backends.llava.loading import load_model
    from llava_avc.testing.tiny import make_tiny_llava

    original = make_tiny_llava(tmp_path / "a" / "llava-tiny", seed=0)
    copy = tmp_path / "b" / "llava-tiny"
    shutil.copytree(original, copy)
    make_tiny_llava(original, seed=1, force=True)  # the recorded tower now holds other weights
    moved = tmp_path / "c" / "llava-tiny-moved"
    moved.parent.mkdir()
    shutil.copytree(copy, tmp_path / "b" / "llava-tiny-2")
    (tmp_path / "b" / "llava-tiny-2").rename(moved)

    from safetensors.torch import load_file

    own = load_file(str(copy / "vision_tower" / "model.safetensors"))
    other = load_file(str(original / "vision_tower" / "model.safetensors"))
    key = next(k for k in own if k.endswith("patch_embedding.weight"))
    assert not torch.equal(own[key], other[key])

    def tower_weights(model):
        return model.get_vision_tower().vision_tower.state_dict()[key].float()

    for checkpoint in (copy, moved):
        _, model, _, _ = load_model(str(checkpoint), device="cpu")
        assert model.config.mm_vision_tower == str((checkpoint / "vision_tower").resolve())
        assert torch.equal(tower_weights(model), own[key].float())
        with llava_avc.patched():
            _, model, _, _ = builder.load_pretrained_model(str(checkpoint), None,  # the patched loader, as scripts
                                                           get_model_name_from_path(str(checkpoint)),  # see it
                                                           device_map="cpu", device="cpu")
        assert torch.equal(tower_weights(model), own[key].float())
