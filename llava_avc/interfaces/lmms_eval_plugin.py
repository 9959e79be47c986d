"""lmms-eval's entry point for llava-avc (group `lmms_eval.models` in setup.cfg): `--model llava_hf_avc`
(lmms-eval's llava_hf, llava-hf checkpoints) and `--model llava_avc` (lmms-eval's llava, the original LLaVA
codebase).

lmms-eval calls `manifests()` every time `lmms_eval.models` is imported, while that package is still
being imported: this module imports nothing of llava-avc's and only lmms-eval's registry, and names the
model classes by path, which lmms-eval imports when one of the models is asked for.
"""

from __future__ import annotations

HF_MODEL_ID = "llava_hf_avc"
LLAVA_MODEL_ID = "llava_avc"
_HF_CLASSES = "llava_avc.interfaces.lmms_eval_models"
_LLAVA_CLASSES = "llava_avc.interfaces.lmms_eval_llava"


def manifests():
    """The `ModelManifest`s: `llava_hf_avc`'s chat class (lmms-eval's default) and simple one
    (`--force_simple`); `llava_avc`'s simple class (lmms-eval's llava has no chat flavour)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=HF_MODEL_ID, simple_class_path=f"{_HF_CLASSES}.LlavaHfAvc",
                          chat_class_path=f"{_HF_CLASSES}.LlavaHfAvcChat"),
            ModelManifest(model_id=LLAVA_MODEL_ID, simple_class_path=f"{_LLAVA_CLASSES}.LlavaAvc")]
