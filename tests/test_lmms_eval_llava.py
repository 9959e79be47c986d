"""llava-avc's methods inside lmms-eval on the original LLaVA codebase (`--model llava_avc`, lmms-eval's `llava`
over llava-torch), through the real `python -m lmms_eval` with lmms-eval's own POPE task logic over a small
local copy of the data (tests/lmms_eval_task.py). The lmms-457 profile: transformers 4.57, where LLaVA 1.2.2
runs only through llava-avc (its forward rejects `cache_position`), so lmms-eval's own `llava` is compared
under `llava_avc.patch_llava()`."""

from __future__ import annotations

import pytest

pytest.importorskip("llava", reason="needs the original LLaVA codebase (llava-torch; the lmms-457 profile)")
pytest.importorskip("lmms_eval", reason="needs lmms-eval (the lmms-457 profile: bash scripts/install.sh --profile "
                                        "lmms-457)")
import torch  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig  # noqa: E402
from llava_avc.errors import UserError  # noqa: E402
from lmms_eval_task import NEW_TOKENS, POST_PROMPT, make_pope_task, results_of, run_lmms_eval  # noqa: E402

#: lmms-eval's own `python -m lmms_eval`, with LLaVA patched first (how LLaVA 1.2.2 runs on transformers 4.57).
PATCHED_LMMS_EVAL = ("-c", "import runpy, llava_avc; llava_avc.patch_llava(); "
                           "runpy.run_module('lmms_eval', run_name='__main__', alter_sys=True)")


@pytest.fixture(scope="module")
def pope_task(tmp_path_factory, sample_image):
    """(task folder for --include_path, [(question text, PIL image)] in doc order)."""
    return make_pope_task(tmp_path_factory.mktemp("lmms"), sample_image)


def _model_args(checkpoint, method_args: str) -> str:
    # lmms-eval's llava puts the model on cuda:RANK unless device_map=auto (then on --device).
    return f"pretrained={checkpoint},device_map=auto,{method_args}"


def test_method_none_answers_exactly_as_lmms_evals_own_llava(pope_task, tiny_llava_dir, tmp_path):
    task, _ = pope_task
    theirs = run_lmms_eval(task, tmp_path / "llava", "llava", f"pretrained={tiny_llava_dir},device_map=auto",
                           launcher=PATCHED_LMMS_EVAL)
    ours = run_lmms_eval(task, tmp_path / "ours", "llava_avc", _model_args(tiny_llava_dir, "method=none"))
    assert ours == theirs
    assert len(set(theirs.values())) > 1  # the questions make the answers differ


def _reference_answer(tokenizer, model, image_processor, question: str, image) -> str:
    """`llava_avc.generate` on the prompt lmms-eval's llava builds (rebuilt here from LLaVA's own pieces)."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    conversation = conv_templates["vicuna_v1"].copy()  # lmms-eval's llava default conv_template
    conversation.append_message(conversation.roles[0], "<image>\n" + question + POST_PROMPT)
    conversation.append_message(conversation.roles[1], None)
    input_ids = tokenizer_image_token(conversation.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    images = process_images([image], image_processor, model.config).to(torch.float16)
    with torch.no_grad():
        output = llava_avc.generate(model, input_ids[None], images=images, image_sizes=[image.size],
                                    avc=AVCConfig(alpha=1.5, gamma=0.4), do_sample=False, max_new_tokens=NEW_TOKENS)
    return tokenizer.batch_decode(output, skip_special_tokens=True)[0]


def test_method_avc_answers_as_llava_avc_generate_and_records_the_method(pope_task, tiny_llava_dir, tmp_path):
    from llava.model.builder import load_pretrained_model

    task, docs = pope_task
    out = tmp_path / "avc"
    answers = run_lmms_eval(task, out, "llava_avc", _model_args(tiny_llava_dir, "method=avc,alpha=1.5,gamma=0.4"))
    # As lmms-eval's llava loads it: LLaVA's loader, fp16, sdpa attention.
    tokenizer, model, image_processor, _ = load_pretrained_model(str(tiny_llava_dir), None, "llava-tiny",
                                                                 device_map="auto", attn_implementation="sdpa")
    expected = {doc_id: _reference_answer(tokenizer, model.eval(), image_processor, question, image)
                for doc_id, (question, image) in enumerate(docs)}
    assert answers == expected
    none = run_lmms_eval(task, tmp_path / "none", "llava_avc", _model_args(tiny_llava_dir, "method=none"))
    assert answers != none  # AVC changed answers: the comparison above is not one of two plain decodings
    config = results_of(out)["config"]
    assert config["model"] == "llava_avc" and "method=avc,alpha=1.5,gamma=0.4" in config["model_args"]


@pytest.mark.parametrize("method_args", ["method=avc", "method=vcd,seed=7"], ids=["avc", "vcd-seeded"])
def test_batch_size_4_answers_as_batch_size_1(pope_task, tiny_llava_dir, tmp_path, method_args):
    task, _ = pope_task
    args = _model_args(tiny_llava_dir, method_args)
    one = run_lmms_eval(task, tmp_path / "one", "llava_avc", args)
    four = run_lmms_eval(task, tmp_path / "four", "llava_avc", args, "--batch_size", "4")
    assert four == one


@pytest.mark.parametrize("model_args, message", [
    ({}, r"--model_args needs method= \(one of avc, vcd, m3id, none\)"),
    ({"method": "m3di"}, r"unknown method 'm3di'\. Did you mean 'm3id'\?"),
    ({"method": "avc", "conv_mode": "llava_v1"}, r"--model_args conv_mode='llava_v1' is not a model_arg of llava_avc: "
                                                 r"method avc takes alpha, beta, gamma, lam, masking, noise_seed; "
                                                 r"llava takes pretrained, .*conv_template"),
    ({"method": "avc", "alpha": -1}, r"AVCConfig: `alpha` \(=-1.0\) must be"),
])
def test_bad_model_args_are_one_line_before_anything_loads(model_args, message):
    from llava_avc.interfaces.lmms_eval_llava import LlavaAvc

    with pytest.raises(UserError, match=message) as error:
        LlavaAvc(pretrained="/nonexistent/never-loaded", **model_args)
    assert "\n" not in str(error.value)
