"""Offline factory for small random LLaVA checkpoints (tests, CPU demos, GPU benchmarks).

``make_tiny_llava(DIR)`` writes a complete LLaVA-1.5-format checkpoint directory that LLaVA's own
loader opens with no network::

    from llava.model.builder import load_pretrained_model
    from llava.mm_utils import get_model_name_from_path
    load_pretrained_model(DIR, None, get_model_name_from_path(DIR), device_map="cpu", device="cpu")

Layout of ``DIR`` (its last path component must contain ``llava``)::

    config.json                 LlavaConfig (model_type llava_llama), mm_* fields as llava-v1.5
    generation_config.json
    model*.safetensors          fp16 LLM + model.mm_projector.* (+ model.image_newline for anyres)
    tokenizer.model             sentencepiece BPE trained here on llava_avc/data (see below)
    tokenizer_config.json, special_tokens_map.json
    vision_tower/               random CLIPVisionModel + CLIPImageProcessor; config.json's
                                mm_vision_tower is the ABSOLUTE path of this folder (LLaVA's own
                                loader needs it); llava-avc's loaders use the folder inside a copied
                                or moved checkpoint instead (backends.checkpoints.own_vision_tower)
    tiny_llava_build.json       how it was made (preset, seed, overrides, corpus version)

Tokenizer: a sentencepiece BPE model trained at build time (``num_threads=1``, in memory) on
``llava_avc/data/tokenizer_corpus_v1.txt`` with LLaMA's conventions (``<unk>``=0, ``<s>``=1,
``</s>``=2, no pad piece, byte fallback, dummy prefix, split digits, identity normalization).
It is trained to ``min(vocab_size, SPM_TRAINED_VOCAB)`` pieces; a larger ``vocab_size`` (e.g. the
32000 of ``7b-shape``; the ~29 KB corpus supports at most ~6.9k BPE pieces) is reached by
appending UNUSED-type pieces ``<unused_00000>``, ``<unused_00001>``, ... which sentencepiece never
emits when encoding. Every preset therefore tokenizes text identically, and the same corpus
and sentencepiece version give byte-identical ``tokenizer.model`` files on every machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import torch

from ..errors import UserError

__all__ = [
    "CORPUS_VERSION",
    "PRESETS",
    "SPM_TRAINED_VOCAB",
    "build_tokenizer",
    "check_linear_out_features",
    "load_tiny",
    "make_tiny_llava",
    "preset_configs",
    "sample_image",
]

#: Version of the tokenizer training text; bump it (and add a new file) whenever the text changes.
CORPUS_VERSION = "v1"
CORPUS_FILE = Path(__file__).resolve().parent / "data" / f"tokenizer_corpus_{CORPUS_VERSION}.txt"
#: Number of pieces actually learned by BPE; larger vocabularies are padded with UNUSED pieces.
SPM_TRAINED_VOCAB = 4000
#: out_features of every nn.Linear must be a multiple of this (bitsandbytes' CPU 4-bit kernels).
LINEAR_MULTIPLE = 32
BUILD_INFO_FILE = "tiny_llava_build.json"
VISION_SUBDIR = "vision_tower"

# OpenAI CLIP normalization, as in openai/clip-vit-large-patch14-336's preprocessor_config.json.
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Fields shared by all presets, as in liuhaotian/llava-v1.5-7b's config.json.
_LLAVA_COMMON = {
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_patch_merge_type": "flat",
    "image_aspect_ratio": "pad",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "use_mm_proj": True,
    "tokenizer_model_max_length": 2048,
    "tokenizer_padding_side": "right",
    "freeze_mm_mlp_adapter": False,
    "tune_mm_mlp_adapter": False,
    "mm_projector_lr": None,
}
_LLM_COMMON = {
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
    "use_cache": True,
}
_TINY_LLM = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 4000,
    # Weight init of the tiny presets: see the measurement note below.
    "initializer_range": 0.15,
}
# Why not LLaMA's default initializer_range=0.02: a random 64-wide model then has q.k scores of
# std ~0.03, i.e. uniform attention over the image tokens (max/mean ~1.0-1.1 at the last prompt
# position), and next-token logits of std ~0.16 whose top-2 gap is often < 0.05 (median
# 0.02-0.08 over prompts, seeds 0-1), so greedy tests flip on rounding noise.
# Measured (fp32; 5 llava_v1 prompts x 2 images x 8 greedy steps; seeds 0-4; attention = last
# prompt position over the 576 image tokens, head-averaged, per layer):
#   init std 0.10: attn max/mean ~2.4; std 0.15: ~8-9 (min 3.3, ~17 of 576 tokens above
#   3x the mean); std 0.20: ~40; std 0.25: ~100
#   lm_head std 0.15 (scale 1): median top-2 gap 0.15-0.3, 6-15% of steps < 0.05
#   lm_head std 0.60 (scale 4): median top-2 gap 0.6-1.3, 1-7% of steps < 0.05, top-1 prob
#   ~0.3-0.45 (peaked but not one-hot, so contrastive decoding still has room to act)
# Chosen: std 0.15 for every LLM linear / embedding / mm_projector (a few image tokens get
# several times the mean attention, like LLaVA's "blind" tokens, without collapsing onto one),
# and lm_head multiplied by 4 after init. The greedy output differs between two images for all
# prompts measured, i.e. the image matters. The vision tower keeps CLIP's default init.
_TINY_INIT = {"lm_head_scale": 4.0}
_TINY_VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 64,
}

#: Presets. Each has ``llm`` (LlavaConfig / LlamaConfig fields), ``vision`` (CLIPVisionConfig
#: fields), ``llava`` (mm_* fields on top of _LLAVA_COMMON) and ``init`` (``lm_head_scale``:
#: lm_head weights are multiplied by it after the normal(0, initializer_range) init):
#:
#: ============  ===========================================  ==================================
#: preset        LLM (hidden/inter/layers/heads/kv/vocab)      vision tower / image tokens
#: ============  ===========================================  ==================================
#: tiny          64 / 192 / 4 / 4 / 4 / 4000, init std 0.15,  CLIP 64/128/3L/4H, 336px p14: 576
#:               lm_head x4 (std 0.6)
#: tiny-anyres   same LLM, LLaVA-1.6 anyres + spatial_unpad   CLIP 64/128/3L/4H, 112px p14: 64 per
#:               pinpoints [[112,224],[224,112],[224,224]]    tile, + base image + newlines
#: 7b-shape      4096 / 11008 / 32 / 32 / 32 / 32000 (v1.5)   CLIP ViT-L/14-336: 1024/4096/24L/
#:               init std 0.02 (LLaMA default)                16H, 336px p14: 576
#: ============  ===========================================  ==================================
PRESETS = {
    "tiny": {
        "llm": dict(_TINY_LLM),
        "vision": dict(_TINY_VISION),
        "llava": {},
        "init": dict(_TINY_INIT),
    },
    "tiny-anyres": {
        "llm": dict(_TINY_LLM),
        "vision": dict(_TINY_VISION, image_size=112),
        "llava": {
            "image_aspect_ratio": "anyres",
            "mm_patch_merge_type": "spatial_unpad",
            "image_grid_pinpoints": [[112, 224], [224, 112], [224, 224]],
        },
        "init": dict(_TINY_INIT),
    },
    "7b-shape": {
        "llm": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32000,
            "initializer_range": 0.02,
        },
        "vision": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
        },
        "llava": {},
        "init": {"lm_head_scale": 1.0},
    },
}

_SPM_TRAINER_ARGS = {
    "model_type": "bpe",
    "character_coverage": 1.0,
    "byte_fallback": True,
    "split_digits": True,
    "add_dummy_prefix": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "num_threads": 1,
    "max_sentence_length": 16384,
    "minloglevel": 2,
}


# ----------------------------------------------------------------------------------- configs
# Config fields the factory itself sets: not accepted as overrides.
_FIXED_KEYS = {"architectures", "model_type", "torch_dtype", "transformers_version",
               "_name_or_path", "mm_hidden_size", "mm_vision_tower"}


def _allowed_llm_keys(preset: dict) -> set:
    """Names accepted as ``config_overrides``: LlamaConfig fields plus the preset's mm_* fields."""
    from transformers import LlamaConfig

    return (set(LlamaConfig().to_dict()) | set(_LLAVA_COMMON) | set(preset["llava"])) - _FIXED_KEYS


def preset_configs(preset: str = "tiny", **config_overrides):
    """Return ``(LlavaConfig, CLIPVisionConfig)`` for ``preset`` with LLM ``config_overrides``.

    Builds no weights (a cheap dry check, also for ``7b-shape``). ``mm_vision_tower`` is left
    unset; ``make_tiny_llava`` fills in the absolute path. Raises ValueError for an unknown
    preset, an unknown override name, or any nn.Linear whose out_features is not a multiple
    of 32.
    """
    from llava.model.language_model.llava_llama import LlavaConfig
    from transformers import CLIPVisionConfig

    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    unknown = sorted(set(config_overrides) - _allowed_llm_keys(spec))
    if unknown:
        raise UserError(
            f"unknown config override(s) {unknown} for preset {preset!r}; use LlamaConfig "
            f"field names such as num_hidden_layers, num_key_value_heads, intermediate_size"
        )
    vision = CLIPVisionConfig(**spec["vision"])
    fields = {**_LLM_COMMON, **spec["llm"], **_LLAVA_COMMON, **spec["llava"], **config_overrides}
    llm = LlavaConfig(
        **fields,
        architectures=["LlavaLlamaForCausalLM"],
        mm_hidden_size=vision.hidden_size,
        torch_dtype="float16",
    )
    check_linear_out_features(llm, vision)
    return llm, vision


def _linear_out_features(llm_config, vision_config) -> dict:
    """Map ``module name -> out_features`` for every nn.Linear of the LLM, projector and CLIP.

    The models are instantiated on the meta device (no memory, no init cost, also for 7B).
    """
    from llava.model.multimodal_projector.builder import build_vision_projector
    from transformers import CLIPVisionModel, LlamaForCausalLM

    with torch.device("meta"):
        modules = {
            "llm": LlamaForCausalLM(llm_config),
            "mm_projector": build_vision_projector(llm_config),
            "vision_tower": CLIPVisionModel(vision_config),
        }
    return {
        f"{prefix}.{name}".rstrip("."): mod.out_features
        for prefix, root in modules.items()
        for name, mod in root.named_modules()
        if isinstance(mod, torch.nn.Linear)
    }


def check_linear_out_features(llm_config, vision_config) -> None:
    """Raise ValueError unless every nn.Linear's out_features is a multiple of 32."""
    try:
        outs = _linear_out_features(llm_config, vision_config)
    except ValueError as exc:  # e.g. hidden_size not divisible by num_attention_heads
        raise UserError(f"invalid tiny LLaVA config: {exc}") from exc
    bad = {name: n for name, n in outs.items() if n % LINEAR_MULTIPLE}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in list(bad.items())[:4])
        raise UserError(
            f"{len(bad)} linear layer(s) have out_features that are not a multiple of "
            f"{LINEAR_MULTIPLE} ({shown}); bitsandbytes' CPU 4-bit kernels require it: choose "
            f"hidden_size, intermediate_size, num_key_value_heads*head_dim and vocab_size "
            f"as multiples of {LINEAR_MULTIPLE}"
        )


# --------------------------------------------------------------------------------- tokenizer
def _corpus_lines() -> list:
    """Non-empty lines of the versioned tokenizer training text."""
    text = CORPUS_FILE.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _train_spm_proto(vocab_size: int) -> bytes:
    """Train the BPE model in memory and pad it with UNUSED pieces up to ``vocab_size``."""
    import sentencepiece as spm
    # transformers' copy of the proto module, NOT sentencepiece's: both register
    # 'sentencepiece_model.proto' in protobuf's default pool, so importing sentencepiece's
    # module would later break LlamaTokenizer(legacy=False) ("duplicate file name").
    from transformers.convert_slow_tokenizer import import_protobuf

    n_train = min(vocab_size, SPM_TRAINED_VOCAB)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus_lines()), model_writer=buf,
            vocab_size=n_train, **_SPM_TRAINER_ARGS,
        )
    except RuntimeError as exc:
        raise UserError(f"cannot train a {n_train}-piece tokenizer: {exc}") from exc
    spm_pb2 = import_protobuf()
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    low = min(p.score for p in proto.pieces)
    for i in range(vocab_size - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece = f"<unused_{i:05d}>"
        piece.score = low - 1.0 - i
        piece.type = spm_pb2.ModelProto.SentencePiece.UNUSED
    return proto.SerializeToString()


def build_tokenizer(out_dir, vocab_size: int = 4000):
    """Train the corpus tokenizer, save it as a slow LlamaTokenizer into ``out_dir``, return it.

    ``len(tokenizer) == vocab_size`` exactly (UNUSED padding above SPM_TRAINED_VOCAB).
    """
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory(prefix="tiny-llava-spm-") as tmp:
        vocab_file = Path(tmp) / "tokenizer.model"
        vocab_file.write_bytes(_train_spm_proto(vocab_size))
        tokenizer = LlamaTokenizer(
            vocab_file=str(vocab_file), legacy=False, add_bos_token=True, add_eos_token=False,
            pad_token="<unk>", model_max_length=2048, padding_side="right",
            clean_up_tokenization_spaces=False,
        )
        tokenizer.save_pretrained(str(out_dir))
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} entries, expected {vocab_size}")
    return tokenizer


# ----------------------------------------------------------------------------------- weights
@contextlib.contextmanager
def _default_dtype(dtype):
    """Temporarily construct new tensors in ``dtype`` (weights are born fp16: no fp32 copy)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _write_vision_tower(vision_config, out_dir: Path) -> None:
    """Save a random CLIPVisionModel (fp16) and an OpenAI-CLIP-style image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    with _default_dtype(torch.float16):
        model = CLIPVisionModel(vision_config)
    model.save_pretrained(str(out_dir))
    side = vision_config.image_size
    CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": side}, resample=3,
        do_center_crop=True, crop_size={"height": side, "width": side},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True,
    ).save_pretrained(str(out_dir))
    del model


def _write_llava(llm_config, vision_dir: Path, final_vision_dir: Path, out_dir: Path,
                 lm_head_scale: float = 1.0) -> None:
    """Build the random fp16 LlavaLlamaForCausalLM and save it (safetensors + config.json).

    The model is constructed against the staging vision tower (its config is read at init);
    config.json records ``final_vision_dir``, the absolute path after the final rename.
    """
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    llm_config.mm_vision_tower = str(vision_dir)
    with _default_dtype(torch.float16):
        model = LlavaLlamaForCausalLM(llm_config)
    inner = model.get_model()
    if hasattr(inner, "image_newline"):  # created with torch.empty by LLaVA: init as LLaVA does
        std = 1 / math.sqrt(llm_config.hidden_size)
        inner.image_newline.data = torch.randn(llm_config.hidden_size).to(torch.float16) * std
    model.lm_head.weight.data.mul_(lm_head_scale)
    model.config.mm_vision_tower = str(final_vision_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size="5GB")
    del model


# ------------------------------------------------------------------------------ directories
def _check_dir_name(path: Path) -> None:
    """LLaVA's loader picks the model class from the last path component: require 'llava'."""
    from llava.mm_utils import get_model_name_from_path

    name = get_model_name_from_path(str(path)).lower()
    if "llava" not in name:
        raise UserError(
            f"checkpoint directory name {path.name!r} must contain 'llava' (LLaVA's "
            f"load_pretrained_model only builds a LLaVA model then); use e.g. {path.name}-llava"
        )
    for word, cls in (("lora", "a LoRA delta"), ("mpt", "LlavaMpt"), ("mistral", "LlavaMistral")):
        if word in name:
            raise UserError(
                f"checkpoint directory name {path.name!r} contains {word!r}, which makes "
                f"LLaVA's loader treat it as {cls}; rename it, e.g. llava-tiny"
            )


def _check_target(path: Path, force: bool) -> None:
    """Refuse an existing file, or an existing non-empty directory unless ``force``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory; remove it first")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(
            f"{path} exists and is not empty; pass force=True (--force) to replace its contents"
        )


def _install(staging: Path, final: Path) -> None:
    """Move the finished staging directory onto ``final`` (removing what was there)."""
    if final.is_dir():
        shutil.rmtree(final)
    os.rename(staging, final)


def _build_info(preset: str, seed: int, overrides: dict) -> dict:
    """Provenance recorded next to the weights."""
    import sentencepiece

    from llava_avc import __version__

    return {
        "preset": preset,
        "seed": seed,
        "init": PRESETS[preset]["init"],
        "config_overrides": overrides,
        "corpus_version": CORPUS_VERSION,
        "corpus_sha256": hashlib.sha256(CORPUS_FILE.read_bytes()).hexdigest(),
        "sentencepiece_version": sentencepiece.__version__,
        "llava_avc_version": __version__,
    }


def _build(staging: Path, final: Path, preset: str, seed: int, llm_config, vision_config,
           overrides: dict) -> None:
    """Write every checkpoint file into ``staging``; config.json points at ``final``'s tower."""
    with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left untouched
        torch.manual_seed(seed)
        _write_vision_tower(vision_config, staging / VISION_SUBDIR)
        _write_llava(llm_config, staging / VISION_SUBDIR, final / VISION_SUBDIR, staging,
                     PRESETS[preset]["init"]["lm_head_scale"])
    build_tokenizer(staging, llm_config.vocab_size)
    info = _build_info(preset, seed, overrides)
    (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


# -------------------------------------------------------------------------------- public API
def make_tiny_llava(out_dir, *, preset: str = "tiny", seed: int = 0, force: bool = False,
                    **config_overrides) -> Path:
    """Write a random LLaVA checkpoint for ``preset`` to ``out_dir`` and return its absolute path.

    ``config_overrides`` update the preset's LLM config (LlamaConfig / mm_* field names;
    unknown names raise ValueError). The same ``seed`` gives identical weights. The build
    happens in a hidden sibling directory that is renamed onto ``out_dir`` only when complete
    (with ``force``, the old contents are removed just before that rename, so a failed build
    keeps them). Raises ValueError for a directory name without 'llava' (or with 'lora', 'mpt',
    'mistral', which switch LLaVA's loader to another class), a bad preset or override, and
    UserError for an existing non-empty directory unless ``force`` is true.
    """
    final = Path(out_dir).expanduser().resolve()
    _check_dir_name(final)
    _check_target(final, force)
    llm_config, vision_config = preset_configs(preset, **config_overrides)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _build(staging, final, preset, seed, llm_config, vision_config, config_overrides)
        _install(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def load_tiny(path, dtype=torch.float32):
    """Load a checkpoint with LLaVA's own loader on CPU and cast model + vision tower to ``dtype``.

    LLaVA's loader always loads fp16; on CPU fp32 is several times faster. Returns
    ``(tokenizer, model, image_processor, context_len)`` with the model in eval mode.
    """
    from ..backends.llava.loading import load_model

    return load_model(str(Path(path).expanduser().resolve()), device="cpu", dtype=dtype)


def sample_image():
    """Return matplotlib's bundled ``grace_hopper.jpg`` (512x600 portrait) as an RGB PIL image."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return img.convert("RGB")


LORA_TARGETS = ("q_proj", "v_proj")


def make_tiny_lora(out_dir, base_dir, *, seed: int = 0, rank: int = 8, force: bool = False) -> Path:
    """Write a LLaVA LoRA checkpoint (as LLaVA's LoRA training saves it) on top of ``base_dir``.

    The directory holds the LLaVA ``config.json`` (with the mm_* fields), a peft adapter on the
    LLM's ``q_proj``/``v_proj`` with RANDOM non-zero B matrices (so the merge changes the model),
    and ``non_lora_trainables.bin`` with a new random ``mm_projector``. LLaVA's loader takes it as
    ``load_pretrained_model(out_dir, base_dir, name)`` when the name contains both 'llava' and
    'lora'; it then loads the base, the projector, and merges the adapter through peft.
    """
    from llava.mm_utils import get_model_name_from_path
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from peft import LoraConfig, get_peft_model

    final = Path(out_dir).expanduser().resolve()
    name = get_model_name_from_path(str(final)).lower()
    if "llava" not in name or "lora" not in name:
        raise UserError(f"LoRA checkpoint directory name {final.name!r} must contain 'llava' and 'lora' "
                        "(LLaVA's loader takes the LoRA path by name); use e.g. llava-tiny-lora")
    _check_target(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlavaLlamaForCausalLM.from_pretrained(str(base_dir), torch_dtype=torch.float32)
            projector = {f"base_model.model.model.mm_projector.{key}": torch.randn_like(value) * 0.05
                         for key, value in model.get_model().mm_projector.state_dict().items()}
            lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none",
                                                    target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
            for param_name, param in lora.named_parameters():
                if "lora_B" in param_name:
                    torch.nn.init.normal_(param, std=0.05)
            lora.save_pretrained(str(staging))
        model.config.save_pretrained(str(staging))
        torch.save(projector, staging / "non_lora_trainables.bin")
        _install(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final
