"""lmms-eval's entry point for llava-avc: `--model llava_hf_avc` (group `lmms_eval.models` in setup.cfg).

lmms-eval calls `manifests()` every time `lmms_eval.models` is imported, while that package is still
being imported: this module imports nothing of llava-avc's and only lmms-eval's registry, and names the
model classes by path (`llava_avc.interfaces.lmms_eval_models`), which lmms-eval imports when
`--model llava_hf_avc` is asked for.
"""

from __future__ import annotations

MODEL_ID = "llava_hf_avc"
_CLASSES = "llava_avc.interfaces.lmms_eval_models"


def manifests():
    """The `ModelManifest` of `llava_hf_avc`: the chat class (lmms-eval's default) and the simple one
    (`--force_simple`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{_CLASSES}.LlavaHfAvc",
                         chat_class_path=f"{_CLASSES}.LlavaHfAvcChat")
