"""LLaVA's web demo with AVC: the real controller and model_worker (FastAPI under uvicorn), started as
processes on 127.0.0.1 with the tiny checkpoint on the CPU, asked exactly as LLaVA's gradio web server
asks them (a `/worker_generate_stream` POST with a base64 image, streamed NUL-separated JSON), and
threaded / streaming generate calls in-process.

The worker generates in a new `threading.Thread` per request; before the default method was made
process-wide, that thread silently decoded without AVC.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import requests  # noqa: E402
import torch  # noqa: E402
from transformers import TextIteratorStreamer  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig  # noqa: E402
from llava_avc.backends.llava.pipeline import LlavaPipeline  # noqa: E402
from llava_avc.backends.llava.prompts import build_prompt  # noqa: E402
from llava_avc.interfaces.ask import ask  # noqa: E402
from llava_avc.patches.llava_patch import GENERATE_CALLS, PLAIN_IMAGE_CALLS, default_method  # noqa: E402

from helpers import QUESTIONS, images_for, no_eos, prompt_ids  # noqa: E402

QUERY = QUESTIONS[0]
NEW_TOKENS = 8
STARTUP_S = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


class Server:
    """A server process (LLaVA's controller, or a worker under `llava-avc run`), stopped by its PID."""

    def __init__(self, argv: list, cwd: Path, port: int, ready_path: str, name: str):
        self.port, self.name = port, name
        self.url = f"http://127.0.0.1:{port}"
        self.log = cwd / f"{name}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", *argv], cwd=cwd, env=_env(), stdout=log,
                                            stderr=subprocess.STDOUT)
        self.ready_path = ready_path

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.name} exited early:\n{self.log.read_text()[-3000:]}"
            try:
                if requests.post(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.name} did not answer within {STARTUP_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM by PID; returns the exit status."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def _start_worker(root: Path, controller: Server, method: str, model_name: str, *extra) -> Server:
    port = _free_port()
    argv = ["llava_avc", "run", "llava.serve.model_worker", "--device", "cpu", "--method", method,
            "--run-json", str(root / f"{model_name}.run.json"), "--record-every", "0.5", "--",
            "--host", "127.0.0.1", "--port", str(port), "--worker-address", f"http://127.0.0.1:{port}",
            "--controller-address", controller.url, "--model-path", str(root / "llava-tiny"),
            "--model-name", model_name, *extra]
    return Server(argv, root, port, "/worker_get_status", model_name)


def _image_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _demo_request(url: str, model_name: str, image) -> str:
    """POST /worker_generate_stream as llava.serve.gradio_web_server's http_bot does; the answer text."""
    prompt = build_prompt(QUERY, "llava_v1", None)  # the llava_v1 conversation, as the demo's default
    params = {"model": model_name, "prompt": prompt, "temperature": 0.0, "top_p": 1.0,
              "max_new_tokens": NEW_TOKENS, "stop": "</s>", "images": [_image_base64(image)]}
    response = requests.post(url + "/worker_generate_stream", json=params, stream=True, timeout=300)
    assert response.status_code == 200
    chunks = [json.loads(chunk.decode()) for chunk in response.iter_lines(delimiter=b"\0") if chunk]
    assert chunks and all(chunk["error_code"] == 0 for chunk in chunks), chunks[-1:]
    text = chunks[-1]["text"]
    assert text.startswith(prompt)
    return text[len(prompt):].strip()


def _record(root: Path, model_name: str) -> dict:
    return json.loads((root / f"{model_name}.run.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_llava_dir, sample_image):
    """LLaVA's controller and three workers under `llava-avc run`: an AVC and a plain worker registered
    with the controller (the demo's A/B dropdown), and an AVC worker started with --no-register."""
    root = tmp_path_factory.mktemp("serve")
    (root / "llava-tiny").symlink_to(tiny_llava_dir, target_is_directory=True)
    sample_image.save(root / "photo.png")
    controller_port = _free_port()
    controller = Server(["llava.serve.controller", "--host", "127.0.0.1", "--port", str(controller_port)],
                        root, controller_port, "/list_models", "controller")
    controller.wait_ready()
    workers = {
        "avc": _start_worker(root, controller, "avc", "llava-tiny-avc"),
        "none": _start_worker(root, controller, "none", "llava-tiny"),
        "unregistered": _start_worker(root, controller, "avc", "llava-tiny-unregistered", "--no-register"),
    }
    try:
        for worker in workers.values():
            worker.wait_ready()
        yield root, controller, workers
    finally:
        for worker in workers.values():
            worker.stop()
        controller.stop()


@pytest.fixture(scope="module")
def expected(tiny_llava, demo):
    """`llava-avc ask` (its library function) on the same image, prompt and greedy settings."""
    root = demo[0]
    pipeline = LlavaPipeline(*tiny_llava)
    answers = {method: ask(str(root / "llava-tiny"), str(root / "photo.png"), QUERY, method=method,
                           loaded=pipeline, max_new_tokens=NEW_TOKENS).answer for method in ("avc", "none")}
    assert answers["avc"] != answers["none"]  # otherwise the comparisons below could not tell them apart
    return answers


def test_a_worker_started_with_no_register_serves_avc_like_ask(demo, expected, sample_image):
    root, _, workers = demo
    worker = workers["unregistered"]
    assert _demo_request(worker.url, "llava-tiny-unregistered", sample_image) == expected["avc"]
    _wait_for_calls(root, "llava-tiny-unregistered", {"avc": 1})  # visible while the worker still runs
    assert _record(root, "llava-tiny-unregistered")["status"] == "running"


def test_a_plain_worker_serves_plain_llava(demo, expected, sample_image):
    root, _, workers = demo
    assert _demo_request(workers["none"].url, "llava-tiny", sample_image) == expected["none"]
    _wait_for_calls(root, "llava-tiny", {"none": 1})


def test_the_controller_routes_the_demo_dropdown_to_the_avc_and_the_plain_worker(demo, expected, sample_image):
    root, controller, workers = demo
    models = requests.post(controller.url + "/list_models", timeout=10).json()["models"]
    assert {"llava-tiny-avc", "llava-tiny"} <= set(models)
    for model_name in ("llava-tiny-avc", "llava-tiny"):
        address = requests.post(controller.url + "/get_worker_address", json={"model": model_name},
                                timeout=10).json()["address"]
        assert address == workers["avc" if model_name.endswith("avc") else "none"].url
    before = _record(root, "llava-tiny-avc")["generate_calls"].get("avc", 0)
    assert _demo_request(controller.url, "llava-tiny-avc", sample_image) == expected["avc"]
    assert _demo_request(controller.url, "llava-tiny", sample_image) == expected["none"]
    _wait_for_calls(root, "llava-tiny-avc", {"avc": before + 1})


def test_a_stopped_worker_leaves_a_complete_record(demo, sample_image):
    root, _, workers = demo
    worker = workers["avc"]
    _demo_request(worker.url, "llava-tiny-avc", sample_image)
    assert worker.stop() == -signal.SIGTERM  # the record is completed, then the process ends by the signal
    record = _record(root, "llava-tiny-avc")
    assert record["status"] == "stopped" and record["exit_code"] == 128 + signal.SIGTERM
    assert set(record["generate_calls"]) == {"avc"} and record["generate_calls"]["avc"] >= 1
    assert record["plain_calls_with_images"] == 0


def _wait_for_calls(root: Path, model_name: str, calls: dict, timeout: float = 30.0) -> None:
    """The running worker's record shows `calls` (it is rewritten every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _record(root, model_name)["generate_calls"] == calls:
            return
        time.sleep(0.2)
    raise AssertionError(f"{model_name}: record shows {_record(root, model_name)['generate_calls']}, not {calls}")


# ---------------------------------------------------------------- threads and streamers, in-process


@pytest.fixture
def single(tiny_llava, sample_image):
    tokenizer, model, image_processor, _ = tiny_llava
    ids = prompt_ids(tokenizer, QUERY).unsqueeze(0)
    kwargs = dict(images=images_for(model, image_processor, [sample_image]), image_sizes=[sample_image.size],
                  do_sample=False, max_new_tokens=NEW_TOKENS, logits_processor=no_eos(tokenizer))
    return model, ids, kwargs


def test_the_default_method_reaches_calls_from_another_thread_and_a_thread_pool(single):
    model, ids, kwargs = single
    with llava_avc.patched():
        explicit = model.generate(ids, avc=AVCConfig(), **kwargs)
        plain = model.generate(ids, **kwargs)
        assert explicit.tolist() != plain.tolist()
        results = {}
        before = GENERATE_CALLS["avc"], PLAIN_IMAGE_CALLS["none"]
        with default_method(AVCConfig()):
            thread = threading.Thread(target=lambda: results.setdefault("thread", model.generate(ids, **kwargs)))
            thread.start()
            thread.join()
            with ThreadPoolExecutor(max_workers=2) as pool:
                results["pool"] = pool.submit(model.generate, ids, **kwargs).result()
        assert results["thread"].tolist() == results["pool"].tolist() == explicit.tolist()
        assert (GENERATE_CALLS["avc"], PLAIN_IMAGE_CALLS["none"]) == (before[0] + 2, before[1])
        # restored when the block exits, in every thread
        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(model.generate, ids, **kwargs).result().tolist() == plain.tolist()


def test_a_streamer_fed_by_llava_avc_generate_in_a_thread_gives_the_answer(single, tiny_llava):
    """The serving pattern with the public API: generate in a Thread, read a TextIteratorStreamer."""
    model, ids, kwargs = single
    tokenizer = tiny_llava[0]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    thread = threading.Thread(target=llava_avc.generate, args=(model, ids),
                              kwargs=dict(kwargs, avc=AVCConfig(), streamer=streamer))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    with torch.inference_mode():
        direct = llava_avc.generate(model, ids, avc=AVCConfig(), **kwargs)
    assert streamed.strip() == tokenizer.batch_decode(direct, skip_special_tokens=True)[0].strip()


def test_an_image_served_without_the_runs_method_is_counted_and_warned_once(single, tmp_path, capsys):
    """The run record's guard: a generate call with images that ran plain decoding under a run whose
    method is avc is counted in `plain_calls_with_images` and is a warning on stderr (once)."""
    from llava_avc.interfaces.run_script import ScriptPlan, _CallTally, _RecordRefresher

    model, ids, kwargs = single
    plan = ScriptPlan(module="llava.serve.model_worker", module_args=[], config=AVCConfig(), device="cpu",
                      load_4bit=False, load_8bit=False, seed=None, max_new_tokens_cap=None, record_every=60.0,
                      quantized=False, record_path=tmp_path / "worker.run.json", answers_file=None)
    record = {"generate_calls": {}, "plain_calls_with_images": 0}
    refresher = _RecordRefresher(plan, record, _CallTally(), plan.record_every)
    with llava_avc.patched():
        model.generate(ids, **kwargs)  # no method named and no default: plain decoding of an image
    refresher.refresh(final=False)
    refresher.refresh(final=False)
    written = json.loads(plan.record_path.read_text())
    assert written["generate_calls"] == {"none": 1} and written["plain_calls_with_images"] == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if "plain LLaVA decoding" in line]
    assert warnings == ["llava-avc run: warning: 1 generate call(s) with images ran plain LLaVA decoding although "
                        "the run's method is avc; report this (the method should apply to every call)."]
