"""Offline factory for small random checkpoints of transformers-native vision-language families.

``make_tiny_family(DIR, family)`` writes a complete checkpoint directory, built from transformers' own
config classes with random weights, that opens offline on transformers 5.25 and 4.57::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(DIR)    # or the family's own class
    processor = AutoProcessor.from_pretrained(DIR)              # needs torchvision: see "Pitfalls"

Files: config.json, model.safetensors (float32), generation_config.json, the tokenizer (tokenizer.json,
tokenizer_config.json, special_tokens_map.json; the Qwen-style families also vocab.json + merges.txt;
InstructBLIP also ``qformer_tokenizer/``), preprocessor_config.json, processor_config.json,
video_preprocessor_config.json (families with a video processor), chat_template.jinja, and
``tiny_llava_build.json`` (provenance, ``"format": "family"``). The processor files are written as JSON
in the hub's layout (one file per sub-processor), not through the processor classes, so every family
can be BUILT without torchvision.

Families. Every LLM: hidden 64, intermediate 192, 4 layers, 4 heads; every vision tower: hidden 64,
intermediate 128, 2 layers, 4 heads. Image tokens per image measured for a 128x128 and a 112x140
(height x width) image:

===============  ============================================  =========================================
family           model                                         image tokens per image, processor
===============  ============================================  =========================================
qwen2_5_vl       Qwen2_5_VLForConditionalGeneration: Qwen2.5   (h/28)*(w/28) after smart_resize to
                 text (2 KV heads, mrope_section [2,3,3]),     multiples of 28 px: 25 (128x128 ->
                 ViT patch 14, temporal patch 2, merge 2,      140x140), 20 (112x140); min_pixels 3136
                 window 112 px, full attention in block 1      (4 tokens), max_pixels 50176 (64 tokens)
qwen3_vl         Qwen3VLForConditionalGeneration: Qwen3-VL     (h/32)*(w/32) after smart_resize to
                 text (2 KV heads, head_dim 16, interleaved    multiples of 32 px: 16 (128x128), 16
                 mrope [4,2,2]), ViT patch 16, merge 2, 256    (112x140 -> 128x128); min 4096 px
                 learned positions, deepstack blocks [0, 1]    (4 tokens), max 65536 px (64 tokens)
llava_onevision  LlavaOnevisionForConditionalGeneration:       anyres_max_9: 16 base (one 56 px tile,
                 Qwen2 text (2 KV heads) + SigLIP vision (56   4x4 patches) + the unpadded grid of the
                 px, patch 14, last layer, strategy "full"),   best pinpoint + one newline per row: 172
                 pinpoints: every 56 px tile grid up to 3x3    (128x128: 3x3 tiles), 104 (112x140)
instructblip     InstructBlipForConditionalGeneration: LLaMA   8 (num_query_tokens); BLIP image
                 (Vicuna-style) decoder, BLIP ViT 112 px       processor: resize to 112x112
                 patch 14, Q-Former 64/2 layers/4 heads with
                 cross-attention in every layer, 8 queries
===============  ============================================  =========================================

On one CPU thread (transformers 5.25, a 128x128 image) a forward pass takes 5-8 ms and an 8-token
greedy ``generate`` 17-25 ms; loading takes 0.05-0.1 s, building 0.2-0.4 s after the imports.

Tokenizers (built here, deterministic, byte-identical on both transformers versions):

- qwen2_5_vl, qwen3_vl, llava_onevision: a byte-level BPE trained with the ``tokenizers`` library on
  ``llava_avc/testing/data/tokenizer_corpus_v1.txt`` with Qwen2's pre-tokenizer (NFC, the regex split,
  ByteLevel), then the family's added tokens in Qwen's order: ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>``, then for the Qwen-VL families ``<|object_ref_start|>`` ... ``<|vision_start|>``,
  ``<|vision_end|>``, ``<|vision_pad|>``, ``<|image_pad|>``, ``<|video_pad|>`` and the non-special
  tool / fim tokens (Qwen3-VL also ``<think>`` ...), for OneVision ``<image>`` and ``<video>``. The
  number of trained pieces makes ``len(tokenizer) == vocab_size == 3648``. ``tokenizer_class``
  Qwen2Tokenizer; eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos (as Qwen); generation_config's
  eos_token_id is ``[<|im_end|>, <|endoftext|>]``.
- instructblip: the LLaMA sentencepiece model of ``llava_avc.testing.tiny`` (text tokenizes as in the
  llava-hf tiny checkpoints) plus ``<image>`` (id 4000, the token the processor repeats
  num_query_tokens times) and ``<pad>`` (4001); embedding rows padded to 4032; bos ``<s>`` (1), eos
  ``</s>`` (2). Q-Former tokenizer (``qformer_tokenizer/``): a lower-casing BERT WordPiece of 1024
  entries (``[PAD]`` 0, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, the characters, the most frequent
  corpus words), padding on the right.
- The LLM tokenizers pad on the LEFT (batched generation).

Chat templates: qwen2_5_vl has Qwen2.5-VL's (a default system message, then
``<|vision_start|><|image_pad|><|vision_end|>`` per image and the text); qwen3_vl Qwen3-VL's without
tools or thinking (no default system message); llava_onevision llava-hf OneVision's (``<image>`` per
image, then a newline and the text). InstructBLIP has no chat format: its prompt is the raw question, as
in the InstructBLIP paper and AvisC's InstructBLIP runs. Its chat_template.jinja renders exactly that
(the user's text items joined by a space) but only the TOKENIZER loads it
(``processor.tokenizer.apply_chat_template(conversation, tokenize=False)``): InstructBlipProcessor drops
a chat template, so ``processor.apply_chat_template`` raises on both versions.

Processor outputs for B prompts with one image each (T tokens):

- Qwen: ``input_ids``, ``attention_mask`` [B, T]; ``mm_token_type_ids`` [B, T] (5.x only; 1 at image
  tokens); ``pixel_values`` [sum over images of t*h*w patches, 3*2*P*P] (P = 14: 1176 columns, P = 16:
  1536; every image's patches concatenated, not one row per prompt); ``image_grid_thw`` [B, 3].
- OneVision: ``input_ids``, ``attention_mask`` [B, T]; ``pixel_values`` [B, tiles + 1, 3, 56, 56]
  (zero-padded to the batch's most tiles: 10 for 128x128, 7 for 112x140); ``image_sizes`` [B, 2]
  (height, width); ``batch_num_images`` [B].
- InstructBLIP: ``input_ids``, ``attention_mask`` [B, 8 + T] (the 8 ``<image>`` tokens first, then the
  left padding, then bos and the question); ``qformer_input_ids``, ``qformer_attention_mask`` [B, Tq]
  ([CLS] question [SEP]); ``pixel_values`` [B, 3, 112, 112].

Weights are drawn from one ``torch.Generator(seed)``, one parameter after another in sorted name
order, by explicit rules (the sharpened init of ``llava_avc.testing.tiny``: attention over the image
is peaked and the greedy answer changes with the image): language-model linears and embeddings
N(0, 0.15), lm_head N(0, 0.15) x 4, the vision-to-text bridges (Qwen's merger and deepstack mergers,
OneVision's projector, InstructBLIP's language_projection) and the whole Q-Former (with query_tokens)
N(0, 0.15), vision towers N(0, 0.02), OneVision's image_newline N(0, 1/sqrt(64)); norm weights 1, biases
0. The same seed gives identical tensors, on 5.25 and 4.57 alike (the saved files are byte-identical).

transformers 5.25 and 4.57: a directory built on either opens on both and gives the same greedy tokens.
config.json carries both rope spellings (``rope_parameters``, and 4.57's ``rope_theta`` plus, for the
Qwen-VL mrope sections, ``rope_scaling``), and OneVision's SigLIP keys are saved as
``vision_tower.vision_model.*`` (the hub's layout; 5.25 alone would drop ``vision_model.``, which 4.57
cannot read).

Pitfalls:

- torchvision: the processors of qwen2_5_vl, qwen3_vl and llava_onevision hold a video processor, and
  transformers' video processors need torchvision, so without it ``AutoProcessor.from_pretrained``
  raises ImportError on both versions (``Qwen2VLVideoProcessor requires the Torchvision library``; 4.57:
  ``AutoVideoProcessor requires ...``); the model, ``AutoTokenizer`` and ``AutoImageProcessor`` (5.25: the
  PIL backend) still load, and InstructBLIP's processor needs no torchvision. PyPI's torchvision wheel is
  a CUDA build that fails to import beside a CPU torch (``operator torchvision::nms does not exist``); with
  its own torch (torch 2.14.1 + torchvision 0.29.1, the hf-vision test profile) every processor loads, and
  its outputs equal ``llava_avc.testing.family_inputs``'s built ones (tests/test_family_processors.py).
- Qwen on 5.x: ``generate`` needs ``mm_token_type_ids`` (the processor returns it). Without it the
  multimodal rotary positions are not computed and the answer silently changes; 4.57 derives them from
  the ids.
- InstructBLIP: the processor pads the Q-Former text on the main tokenizer's side (left), and the
  Q-Former's absolute positions then shift: a left-padded batch differs from one-by-one decoding unless
  the Q-Former text is tokenized again with ``padding_side="right"``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import string
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import UserError
from . import tiny

__all__ = ["FAMILIES", "FAMILY_CLASSES", "family_config", "make_tiny_family"]

FAMILIES = ("llava_onevision", "qwen2_5_vl", "qwen3_vl", "instructblip")
#: The transformers class of each family's checkpoint.
FAMILY_CLASSES = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "instructblip": "InstructBlipForConditionalGeneration",
}
#: The oldest transformers the factory is tested on (Qwen3-VL arrived in 4.57).
OLDEST_TRANSFORMERS = "4.57"

# ------------------------------------------------------------------------------------ sizes
#: Vocabulary of the Qwen-style families (a multiple of 64): their tokenizers have exactly this many entries
#: (the corpus supports at most 3694 byte-level BPE pieces).
QWEN_VOCAB_SIZE = 3648
#: Embedding / lm_head rows of InstructBLIP's LLaMA (4000 pieces + <image> + <pad>, padded to a multiple of 64).
LLAMA_VOCAB_SIZE = 4032
LLM_HIDDEN = 64
LLM_INTERMEDIATE = 192
LLM_LAYERS = 4
LLM_HEADS = 4
LLM_HEAD_DIM = LLM_HIDDEN // LLM_HEADS  # 16
QWEN_KV_HEADS = 2
VISION_HIDDEN = 64
VISION_INTERMEDIATE = 128
VISION_LAYERS = 2
VISION_HEADS = 4
MAX_POSITIONS = 4096

# Qwen2.5-VL: mrope sections of the rotary half-dimension (t, h, w), summing to LLM_HEAD_DIM // 2
# (the 7B's [16, 24, 24] of 64, scaled).
QWEN25_MROPE_SECTION = [2, 3, 3]
QWEN25_ROPE_THETA = 1000000.0
QWEN25_PATCH = 14
QWEN25_WINDOW = 112  # pixels per attention window side (4 merged tokens)
QWEN25_FULL_ATTENTION_BLOCKS = [1]  # block 0 windowed, block 1 full (the 7B: every 8th)
# Qwen3-VL: interleaved mrope ([24, 20, 20] of 64, scaled), learned 16x16 position grid, deepstack.
QWEN3_MROPE_SECTION = [4, 2, 2]
QWEN3_ROPE_THETA = 5000000.0
QWEN3_PATCH = 16
QWEN3_POSITION_EMBEDDINGS = 256
QWEN3_DEEPSTACK_LAYERS = [0, 1]
QWEN_TEMPORAL_PATCH = 2
QWEN_MERGE = 2
#: Pixel budgets of the Qwen image processors, in merged tokens (one merged token = (patch*merge)^2 px).
QWEN_MIN_TOKENS = 4
QWEN_MAX_TOKENS = 64
QWEN_RMS_EPS = 1e-6

# LLaVA-OneVision: SigLIP tiles of 56 px (4x4 patches), pinpoints = every tile grid up to 3x3.
ONEVISION_TILE = 56
ONEVISION_PATCH = 14
ONEVISION_MAX_GRID = 3
ONEVISION_ASPECT_RATIO = "anyres_max_9"

# InstructBLIP: BLIP ViT at 112 px, a Q-Former of 8 queries, a LLaMA decoder.
BLIP_IMAGE = 112
BLIP_PATCH = 14
QFORMER_QUERIES = 8
QFORMER_HIDDEN = 64
QFORMER_INTERMEDIATE = 128
QFORMER_LAYERS = 2
QFORMER_HEADS = 4
QFORMER_CROSS_ATTENTION_FREQUENCY = 1
QFORMER_VOCAB = 1024
QFORMER_MAX_POSITIONS = 512
LLAMA_RMS_EPS = 1e-5
LLAMA_MAX_LENGTH = 2048

# ------------------------------------------------------------------------------------ init
LLM_STD = 0.15  # tiny.py's measurement note says why (peaked attention over the image)
LM_HEAD_SCALE = 4.0
BRIDGE_STD = 0.15
QFORMER_STD = 0.15
VISION_STD = 0.02
#: Name markers of each weight group, first match wins (names as the installed transformers has them).
GROUP_MARKERS = (
    ("bridge", ("visual.merger", "visual.deepstack_merger_list", "multi_modal_projector", "language_projection")),
    ("qformer", ("qformer.", "query_tokens")),
    ("vision", ("visual.", "vision_tower.", "vision_model.")),
    ("newline", ("image_newline",)),
)
GROUP_STD = {"bridge": BRIDGE_STD, "qformer": QFORMER_STD, "vision": VISION_STD, "llm": LLM_STD,
             "newline": LLM_HIDDEN ** -0.5}

# ------------------------------------------------------------------------------- processors
OPENAI_CLIP_MEAN = list(tiny.OPENAI_CLIP_MEAN)
OPENAI_CLIP_STD = list(tiny.OPENAI_CLIP_STD)
HALF = [0.5, 0.5, 0.5]
RESCALE = 1 / 255
PIL_BICUBIC = 3
MODEL_MAX_LENGTH = 32768
BUILD_FORMAT = "family"
SAFETENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
#: OneVision's saved SigLIP keys: ``vision_tower.vision_model.*`` on the hub and in 4.57.
ONEVISION_TOWER_PREFIX = "vision_tower."
SIGLIP_INNER_PREFIX = "vision_model."

# ------------------------------------------------------------------------------- tokenizers
#: Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
#: Qwen2.5-VL's added tokens in Qwen's order: (content, special).
QWEN_VL_ADDED = tuple((t, True) for t in (
    ENDOFTEXT, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", VISION_START, VISION_END, "<|vision_pad|>", IMAGE_PAD, VIDEO_PAD,
)) + tuple((t, False) for t in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
))
QWEN3_VL_ADDED = QWEN_VL_ADDED + tuple(
    (t, False) for t in ("<tool_response>", "</tool_response>", "<think>", "</think>"))
ONEVISION_IMAGE, ONEVISION_VIDEO = "<image>", "<video>"
ONEVISION_ADDED = tuple((t, True) for t in (ENDOFTEXT, IM_START, IM_END, ONEVISION_IMAGE, ONEVISION_VIDEO))
BLIP_IMAGE_TOKEN, BLIP_PAD_TOKEN = "<image>", "<pad>"
QFORMER_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
QFORMER_SUBDIR = "qformer_tokenizer"
#: Characters the Q-Former vocabulary always has (lower case: its normalizer lower-cases first).
QFORMER_ASCII = string.ascii_lowercase + string.digits + string.punctuation
SPM_VOCAB = tiny.SPM_TRAINED_VOCAB  # 4000 sentencepiece pieces (InstructBLIP's LLaMA tokenizer)

# ---------------------------------------------------------------------------- chat templates
#: Qwen2.5-VL's template (the hub's, without add_vision_id).
QWEN25_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Qwen3-VL's template without tools and thinking (no default system message).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: llava-hf OneVision's template: images, then videos, then "\n" + each text.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: InstructBLIP: the raw question (its text items joined by a space); the processor prepends the image tokens.
INSTRUCTBLIP_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{{ message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}"
    "{% endif %}{% endif %}{% endfor %}"
)


# ============================================================================== tokenizers
def _qwen_bpe(added: tuple):
    """A Qwen2-style byte-level BPE (``tokenizers.Tokenizer``) of exactly QWEN_VOCAB_SIZE entries: the
    corpus pieces (ids 0..N-1), then ``added`` [(content, special)] at N, N+1, ..."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    n_pieces = QWEN_VOCAB_SIZE - len(added)
    trainer = trainers.BpeTrainer(vocab_size=n_pieces, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(tiny._corpus_lines(), trainer)
    if tok.get_vocab_size() != n_pieces:
        raise RuntimeError(f"the corpus gave {tok.get_vocab_size()} BPE pieces, expected {n_pieces}")
    for content, special in added:
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    return tok


def _llama_bpe():
    """InstructBLIP's (Vicuna-style) LLaMA tokenizer: tiny.py's sentencepiece model + <image>, <pad>."""
    from ..backends.hf.convert.tokenizer import build_hf_tokenizer

    added = [(BLIP_IMAGE_TOKEN, True), (BLIP_PAD_TOKEN, True)]
    tok, _ = build_hf_tokenizer(tiny._train_spm_proto(SPM_VOCAB), added, add_bos_token=True)
    return tok


def _qformer_vocab(normalizer, pre_tokenizer) -> list:
    """QFORMER_VOCAB WordPiece entries, deterministically (the ``tokenizers`` WordPiece trainer breaks ties
    differently from run to run): the specials, every corpus and printable ASCII character alone and as
    ``##c``, then the most frequent lower-cased corpus words (ties by spelling)."""
    counts = collections.Counter(
        word for line in tiny._corpus_lines()
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = sorted({char for word in counts for char in word} | set(QFORMER_ASCII))
    base = list(QFORMER_SPECIALS) + chars + ["##" + char for char in chars]
    words = sorted((word for word in counts if len(word) > 1), key=lambda word: (-counts[word], word))
    vocab = base + words[:QFORMER_VOCAB - len(base)]
    if len(vocab) != QFORMER_VOCAB:
        raise RuntimeError(f"the corpus gave {len(vocab)} Q-Former entries, expected {QFORMER_VOCAB}")
    return vocab


def _qformer_wordpiece():
    """The Q-Former's lower-casing BERT WordPiece tokenizer ([CLS] text [SEP]) of QFORMER_VOCAB entries."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pad, unk, cls, sep, _ = QFORMER_SPECIALS
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    vocab = {token: index for index, token in enumerate(_qformer_vocab(normalizer, pre_tokenizer))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tok.add_special_tokens(list(QFORMER_SPECIALS))
    return tok


def _added_tokens_decoder(tok) -> dict:
    """tokenizer_config.json's ``added_tokens_decoder`` for every added token of ``tok``."""
    return {
        str(index): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
        for index, t in sorted(tok.get_added_tokens_decoder().items())
    }


def _write_tokenizer(tok, out_dir: Path, tokenizer_class: str, specials: dict, padding_side: str = "left",
                     **extra) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json of ``tok``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": tokenizer_class, **specials, "padding_side": padding_side,
              "clean_up_tokenization_spaces": False, **extra,
              "added_tokens_decoder": _added_tokens_decoder(tok)}
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", {k: v for k, v in specials.items() if v is not None})


def _write_qwen_tokenizer(tok, out_dir: Path) -> None:
    """A Qwen2Tokenizer directory (also vocab.json + merges.txt, the slow tokenizer's files)."""
    tok.model.save(str(out_dir))
    _write_tokenizer(tok, out_dir, "Qwen2Tokenizer",
                     {"bos_token": None, "eos_token": IM_END, "pad_token": ENDOFTEXT, "unk_token": None},
                     model_max_length=MODEL_MAX_LENGTH, split_special_tokens=False, errors="replace",
                     model_input_names=["input_ids", "attention_mask"])


def _token_ids(tok, names: dict) -> dict:
    """``{key: id}`` for ``{key: token}``; raises RuntimeError on a token the vocabulary lacks."""
    ids = {key: tok.token_to_id(token) for key, token in names.items()}
    missing = [names[key] for key, value in ids.items() if value is None]
    if missing:
        raise RuntimeError(f"tokens {missing} are not in the tokenizer; a bug in tiny_families")
    return ids


# ================================================================================ configs
def _qwen_text(extra: dict, ids: dict) -> dict:
    """Qwen2 / Qwen3 text-config fields shared by the families."""
    return {
        "vocab_size": QWEN_VOCAB_SIZE, "hidden_size": LLM_HIDDEN, "intermediate_size": LLM_INTERMEDIATE,
        "num_hidden_layers": LLM_LAYERS, "num_attention_heads": LLM_HEADS, "num_key_value_heads": QWEN_KV_HEADS,
        "hidden_act": "silu", "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": QWEN_RMS_EPS,
        "initializer_range": LLM_STD, "tie_word_embeddings": False, "use_cache": True,
        "bos_token_id": ids["endoftext"], "eos_token_id": ids["im_end"], "pad_token_id": ids["endoftext"],
        **extra,
    }


def _qwen_ids(tok) -> dict:
    """Ids of the Qwen-VL special tokens the configs name."""
    return _token_ids(tok, {"endoftext": ENDOFTEXT, "im_end": IM_END, "image": IMAGE_PAD, "video": VIDEO_PAD,
                            "vision_start": VISION_START, "vision_end": VISION_END})


def _qwen_vl_top(ids: dict) -> dict:
    """Top-level Qwen-VL config fields: the placeholder and vision-delimiter ids."""
    return {"image_token_id": ids["image"], "video_token_id": ids["video"],
            "vision_start_token_id": ids["vision_start"], "vision_end_token_id": ids["vision_end"],
            "tie_word_embeddings": False}


def _qwen_vision(patch: int, activation: str, **extra) -> dict:
    """The vision config both Qwen presets share, with `patch` and `activation`, plus their own fields."""
    return {
        "depth": VISION_LAYERS, "hidden_size": VISION_HIDDEN, "intermediate_size": VISION_INTERMEDIATE,
        "num_heads": VISION_HEADS, "out_hidden_size": LLM_HIDDEN, "patch_size": patch,
        "spatial_merge_size": QWEN_MERGE, "temporal_patch_size": QWEN_TEMPORAL_PATCH,
        "hidden_act": activation, "initializer_range": VISION_STD, **extra,
    }


def _qwen25_config(tok):
    """Qwen2_5_VLConfig of the tiny preset."""
    from transformers import Qwen2_5_VLConfig

    ids = _qwen_ids(tok)
    rope = {"type": "mrope", "mrope_section": QWEN25_MROPE_SECTION}
    text = _qwen_text({"rope_scaling": rope, "rope_theta": QWEN25_ROPE_THETA, "max_window_layers": LLM_LAYERS}, ids)
    vision = _qwen_vision(QWEN25_PATCH, "silu", window_size=QWEN25_WINDOW,
                          fullatt_block_indexes=QWEN25_FULL_ATTENTION_BLOCKS)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_vl_top(ids))


def _qwen3_config(tok):
    """Qwen3VLConfig of the tiny preset."""
    from transformers import Qwen3VLConfig

    ids = _qwen_ids(tok)
    rope = {"rope_type": "default", "mrope_section": QWEN3_MROPE_SECTION, "mrope_interleaved": True}
    text = _qwen_text({"rope_scaling": rope, "rope_theta": QWEN3_ROPE_THETA, "head_dim": LLM_HEAD_DIM,
                       "attention_bias": False}, ids)
    vision = _qwen_vision(QWEN3_PATCH, "gelu_pytorch_tanh", num_position_embeddings=QWEN3_POSITION_EMBEDDINGS,
                          deepstack_visual_indexes=QWEN3_DEEPSTACK_LAYERS)
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_vl_top(ids))


def _onevision_pinpoints() -> list:
    """[height, width] of every tile grid from 1x1 to ONEVISION_MAX_GRID x ONEVISION_MAX_GRID."""
    sides = [ONEVISION_TILE * n for n in range(1, ONEVISION_MAX_GRID + 1)]
    return [[h, w] for h in sides for w in sides]


def _onevision_config(tok):
    """LlavaOnevisionConfig of the tiny preset: Qwen2 text, SigLIP vision."""
    from transformers import LlavaOnevisionConfig

    ids = _token_ids(tok, {"endoftext": ENDOFTEXT, "im_end": IM_END, "image": ONEVISION_IMAGE,
                           "video": ONEVISION_VIDEO})
    text = {"model_type": "qwen2",
            **_qwen_text({"rope_theta": QWEN25_ROPE_THETA, "max_window_layers": LLM_LAYERS}, ids)}
    vision = {
        "model_type": "siglip_vision_model", "hidden_size": VISION_HIDDEN, "intermediate_size": VISION_INTERMEDIATE,
        "num_hidden_layers": VISION_LAYERS, "num_attention_heads": VISION_HEADS, "image_size": ONEVISION_TILE,
        "patch_size": ONEVISION_PATCH, "vision_use_head": False,
    }
    return LlavaOnevisionConfig(
        text_config=text, vision_config=vision, image_token_index=ids["image"], video_token_index=ids["video"],
        vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio=ONEVISION_ASPECT_RATIO,
        image_grid_pinpoints=_onevision_pinpoints(), tie_word_embeddings=False,
    )


def _instructblip_config(tok, qformer_tok):
    """InstructBlipConfig of the tiny preset: BLIP ViT, Q-Former, LLaMA decoder."""
    from transformers import InstructBlipConfig

    ids = _token_ids(tok, {"image": BLIP_IMAGE_TOKEN, "pad": BLIP_PAD_TOKEN, "bos": "<s>", "eos": "</s>"})
    text = {
        "model_type": "llama", "vocab_size": LLAMA_VOCAB_SIZE, "hidden_size": LLM_HIDDEN,
        "intermediate_size": LLM_INTERMEDIATE, "num_hidden_layers": LLM_LAYERS, "num_attention_heads": LLM_HEADS,
        "num_key_value_heads": LLM_HEADS, "hidden_act": "silu", "max_position_embeddings": LLAMA_MAX_LENGTH,
        "rms_norm_eps": LLAMA_RMS_EPS, "initializer_range": LLM_STD, "tie_word_embeddings": False,
        "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
    }
    vision = {
        "hidden_size": VISION_HIDDEN, "intermediate_size": VISION_INTERMEDIATE, "num_hidden_layers": VISION_LAYERS,
        "num_attention_heads": VISION_HEADS, "image_size": BLIP_IMAGE, "patch_size": BLIP_PATCH,
        "initializer_range": VISION_STD, "qkv_bias": True,
    }
    qformer = {
        "vocab_size": QFORMER_VOCAB, "hidden_size": QFORMER_HIDDEN, "num_hidden_layers": QFORMER_LAYERS,
        "num_attention_heads": QFORMER_HEADS, "intermediate_size": QFORMER_INTERMEDIATE,
        "max_position_embeddings": QFORMER_MAX_POSITIONS,
        "cross_attention_frequency": QFORMER_CROSS_ATTENTION_FREQUENCY,
        "encoder_hidden_size": VISION_HIDDEN, "pad_token_id": qformer_tok.token_to_id(QFORMER_SPECIALS[0]),
        "initializer_range": QFORMER_STD,
    }
    return InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                              num_query_tokens=QFORMER_QUERIES, image_token_index=ids["image"])


# =========================================================================== processor files
def _qwen_pixels(patch: int) -> dict:
    """size / min_pixels / max_pixels of a Qwen image or video processor with ``patch``-pixel patches."""
    token_pixels = (patch * QWEN_MERGE) ** 2
    low, high = QWEN_MIN_TOKENS * token_pixels, QWEN_MAX_TOKENS * token_pixels
    return {"size": {"shortest_edge": low, "longest_edge": high}, "min_pixels": low, "max_pixels": high}


def _qwen_processor_files(processor_class: str, patch: int, mean: list, std: list, video_class: str) -> dict:
    """{file name: JSON} of a Qwen-VL processor (image, video, processor configs)."""
    common = {
        "do_resize": True, "do_rescale": True, "rescale_factor": RESCALE, "do_normalize": True,
        "do_convert_rgb": True, "image_mean": mean, "image_std": std, "resample": PIL_BICUBIC,
        "patch_size": patch, "temporal_patch_size": QWEN_TEMPORAL_PATCH, "merge_size": QWEN_MERGE,
        **_qwen_pixels(patch), "processor_class": processor_class,
    }
    return {
        "preprocessor_config.json": {"image_processor_type": "Qwen2VLImageProcessor", **common},
        "video_preprocessor_config.json": {"video_processor_type": video_class, **common},
        "processor_config.json": {"processor_class": processor_class},
    }


def _onevision_processor_files() -> dict:
    """{file name: JSON} of LlavaOnevisionProcessor (image, video, processor configs)."""
    side = {"height": ONEVISION_TILE, "width": ONEVISION_TILE}
    common = {
        "do_resize": True, "size": side, "resample": PIL_BICUBIC, "do_rescale": True, "rescale_factor": RESCALE,
        "do_normalize": True, "image_mean": HALF, "image_std": HALF, "do_convert_rgb": True,
        "processor_class": "LlavaOnevisionProcessor",
    }
    tile_tokens = (ONEVISION_TILE // ONEVISION_PATCH) ** 2  # 16 features per tile ("full": no CLS to drop)
    return {
        "preprocessor_config.json": {"image_processor_type": "LlavaOnevisionImageProcessor", **common,
                                     "do_pad": True, "image_grid_pinpoints": _onevision_pinpoints()},
        "video_preprocessor_config.json": {"video_processor_type": "LlavaOnevisionVideoProcessor", **common},
        "processor_config.json": {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": tile_tokens,
                                  "vision_feature_select_strategy": "full",
                                  "vision_aspect_ratio": ONEVISION_ASPECT_RATIO},
    }


def _instructblip_processor_files() -> dict:
    """{file name: JSON} of InstructBlipProcessor (BLIP image processor, processor config)."""
    return {
        "preprocessor_config.json": {
            "image_processor_type": "BlipImageProcessor", "do_resize": True,
            "size": {"height": BLIP_IMAGE, "width": BLIP_IMAGE}, "resample": PIL_BICUBIC, "do_rescale": True,
            "rescale_factor": RESCALE, "do_normalize": True, "image_mean": OPENAI_CLIP_MEAN,
            "image_std": OPENAI_CLIP_STD, "do_convert_rgb": True, "processor_class": "InstructBlipProcessor",
        },
        "processor_config.json": {"processor_class": "InstructBlipProcessor", "num_query_tokens": QFORMER_QUERIES},
    }


# ================================================================================== weights
def _group(name: str) -> str:
    """The weight group of parameter ``name`` (GROUP_MARKERS; default the language model)."""
    for group, markers in GROUP_MARKERS:
        if any(marker in name for marker in markers):
            return group
    return "llm"


def _init_tensor(name: str, module, shape, gen: torch.Generator) -> torch.Tensor:
    """One parameter by the rules: norms 1 / 0, biases 0, lm_head N(0, LLM_STD) x 4, the rest N(0, group std)."""
    if "Norm" in type(module).__name__:
        return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    scale = LM_HEAD_SCALE if name.endswith("lm_head.weight") else 1.0
    return torch.empty(shape).normal_(0.0, GROUP_STD[_group(name)], generator=gen) * scale


def _fill_weights(model, seed: int) -> None:
    """Overwrite every parameter from one generator, in sorted name order."""
    owners = {f"{mod_name}.{p_name}".lstrip("."): module
              for mod_name, module in model.named_modules()
              for p_name, _ in module.named_parameters(recurse=False)}
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            param = params[name]
            param.copy_(_init_tensor(name, owners[name], tuple(param.shape), gen))


@contextlib.contextmanager
def _quiet_progress():
    """No tqdm bars from transformers' save / load while the factory runs (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _build_model(config, class_name: str, seed: int):
    """The family's model (float32, eval) with the tiny init; the global RNG is left untouched."""
    import transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, class_name)(config)
    _fill_weights(model, seed)
    return model.eval()


# ============================================================================= the families
class _Parts(NamedTuple):
    """What a family's builder returns after writing the tokenizer files into the build directory."""

    config: Any  # the family's transformers config
    class_name: str  # e.g. "Qwen2_5_VLForConditionalGeneration"
    processor_files: dict  # {file name: JSON}
    chat_template: str
    generation: dict  # GenerationConfig fields


def _qwen_parts(added: tuple, config_fn, class_name: str, processor_files: dict, template: str):
    """The builder of a Qwen-style family: ``build(out_dir) -> _Parts`` (writes the Qwen2 tokenizer)."""
    def build(out_dir: Path) -> _Parts:
        tok = _qwen_bpe(added)
        _write_qwen_tokenizer(tok, out_dir)
        endoftext, im_end = tok.token_to_id(ENDOFTEXT), tok.token_to_id(IM_END)
        generation = {"bos_token_id": endoftext, "eos_token_id": [im_end, endoftext], "pad_token_id": endoftext}
        return _Parts(config_fn(tok), class_name, processor_files, template, generation)
    return build


def _instructblip_parts(out_dir: Path) -> _Parts:
    """InstructBLIP's builder: writes the LLaMA tokenizer and the Q-Former tokenizer subfolder."""
    tok = _llama_bpe()
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": BLIP_PAD_TOKEN}
    _write_tokenizer(tok, out_dir, "PreTrainedTokenizerFast", specials, model_max_length=LLAMA_MAX_LENGTH,
                     model_input_names=["input_ids", "attention_mask"])
    qformer = _qformer_wordpiece()
    pad, unk, cls, sep, mask = QFORMER_SPECIALS
    _write_tokenizer(qformer, out_dir / QFORMER_SUBDIR, "BertTokenizer",
                     {"pad_token": pad, "unk_token": unk, "cls_token": cls, "sep_token": sep, "mask_token": mask},
                     padding_side="right", do_lower_case=True, model_max_length=QFORMER_MAX_POSITIONS,
                     model_input_names=["input_ids", "attention_mask"])
    (out_dir / QFORMER_SUBDIR / "vocab.txt").write_text(
        "".join(token + "\n" for token, _ in sorted(qformer.get_vocab().items(), key=lambda kv: kv[1])))
    config = _instructblip_config(tok, qformer)
    text = config.text_config
    generation = {"bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id,
                  "pad_token_id": text.pad_token_id}
    return _Parts(config, FAMILY_CLASSES["instructblip"], _instructblip_processor_files(),
                  INSTRUCTBLIP_CHAT_TEMPLATE, generation)


_BUILDERS = {
    "qwen2_5_vl": _qwen_parts(QWEN_VL_ADDED, _qwen25_config, FAMILY_CLASSES["qwen2_5_vl"],
                              _qwen_processor_files("Qwen2_5_VLProcessor", QWEN25_PATCH, OPENAI_CLIP_MEAN,
                                                    OPENAI_CLIP_STD, "Qwen2VLVideoProcessor"),
                              QWEN25_CHAT_TEMPLATE),
    "qwen3_vl": _qwen_parts(QWEN3_VL_ADDED, _qwen3_config, FAMILY_CLASSES["qwen3_vl"],
                            _qwen_processor_files("Qwen3VLProcessor", QWEN3_PATCH, HALF, HALF,
                                                  "Qwen3VLVideoProcessor"),
                            QWEN3_CHAT_TEMPLATE),
    "llava_onevision": _qwen_parts(ONEVISION_ADDED, _onevision_config, FAMILY_CLASSES["llava_onevision"],
                                   _onevision_processor_files(), ONEVISION_CHAT_TEMPLATE),
    "instructblip": _instructblip_parts,
}


# ============================================================================ writing, checks
def _write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON (sorted keys, trailing newline)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _add_legacy_rope(out_dir: Path) -> None:
    """Give config.json's text config both rope spellings, so that transformers 4.57 (``rope_theta``, and
    ``rope_scaling`` with Qwen-VL's mrope sections, which its attention indexes) and 5.x
    (``rope_parameters``) read the same rotary settings from one file."""
    path = out_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    text = config.get("text_config", {})
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text.get("rope_theta"))
    if theta is not None:
        text.setdefault("rope_theta", theta)
    if "mrope_section" in rope:
        text.setdefault("rope_parameters", {**rope, "rope_theta": theta})
        text.setdefault("rope_scaling", {key: value for key, value in rope.items() if key != "rope_theta"})
    _write_json(path, config)


def _hub_key_layout(out_dir: Path, prefix: str, inner: str) -> None:
    """Rename the saved keys ``prefix + X`` to ``prefix + inner + X`` (the layout of the hub checkpoints,
    which every version loads): transformers 5 saves OneVision's SigLIP tower without ``vision_model.``,
    a layout 4.57 does not read."""
    from safetensors.torch import load_file, save_file

    path = out_dir / SAFETENSORS_FILE
    state = load_file(str(path))
    renamed = {(prefix + inner + key[len(prefix):] if key.startswith(prefix) and not key.startswith(prefix + inner)
                else key): value for key, value in state.items()}
    if renamed.keys() != state.keys():
        save_file(renamed, str(path), metadata={"format": "pt"})


def _save(model, generation: dict, out_dir: Path) -> None:
    """config.json, model.safetensors, generation_config.json, in a layout transformers 4.57 and 5.x both read."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    _add_legacy_rope(out_dir)
    if model.config.model_type == "llava_onevision":
        _hub_key_layout(out_dir, ONEVISION_TOWER_PREFIX, SIGLIP_INNER_PREFIX)


def _verify(out_dir: Path, class_name: str) -> None:
    """Load ``out_dir`` on the meta device and raise RuntimeError on any missing / unexpected / mismatched key."""
    import transformers

    from ..backends.transformers_compat import load_on_meta

    _, info = load_on_meta(getattr(transformers, class_name), out_dir)
    bad = {kind: sorted(map(str, keys))[:5] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
           if (keys := info.get(kind))}
    if bad:
        raise RuntimeError(f"{out_dir} does not load cleanly as {class_name}: {bad}; a bug in tiny_families")


def _build_info(family: str, seed: int, class_name: str) -> dict:
    """Provenance recorded next to the weights."""
    import tokenizers
    import transformers

    from llava_avc import __version__

    return {
        "format": BUILD_FORMAT, "family": family, "class": class_name, "seed": seed,
        "init": {"llm_std": LLM_STD, "lm_head_scale": LM_HEAD_SCALE, "bridge_std": BRIDGE_STD,
                 "qformer_std": QFORMER_STD, "vision_std": VISION_STD},
        "corpus_version": tiny.CORPUS_VERSION,
        "corpus_sha256": hashlib.sha256(tiny.CORPUS_FILE.read_bytes()).hexdigest(),
        "tokenizers_version": tokenizers.__version__, "transformers_version": transformers.__version__,
        "llava_avc_version": __version__,
    }


def family_config(family: str):
    """The transformers config a ``family`` checkpoint gets (trains its tokenizer, builds no weights)."""
    import tempfile

    _check_family(family)
    with tempfile.TemporaryDirectory(prefix="tiny-family-") as tmp:
        return _BUILDERS[family](Path(tmp)).config


def _check_family(family: str) -> None:
    """Raise UserError for a family this factory does not build, or one the installed transformers lacks."""
    import transformers

    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")
    if not hasattr(transformers, FAMILY_CLASSES[family]):
        raise UserError(f"family {family!r} needs transformers >= {OLDEST_TRANSFORMERS} ({FAMILY_CLASSES[family]} "
                        f"is not in the installed {transformers.__version__}); use the 4.57 or hf profile")


# ================================================================================ public API
def make_tiny_family(directory, family: str, seed: int = 0, force: bool = False) -> Path:
    """Write a random ``family`` checkpoint (model + processor) to ``directory``; return its absolute path.

    The same ``seed`` gives identical weights. The build happens in a hidden sibling directory, is loaded
    once on the meta device with strict key checks, and only then renamed onto ``directory`` (with
    ``force`` the old contents go just before that rename, so a failed build keeps them). Raises
    UserError for an unknown family and for an existing non-empty directory unless ``force``.
    """
    from ..backends.hf.convert import staging_dir

    _check_family(family)
    final = Path(directory).expanduser().resolve()
    tiny._check_target(final, force)
    with staging_dir(final) as staging, _quiet_progress():
        parts = _BUILDERS[family](staging)
        _save(_build_model(parts.config, parts.class_name, seed), parts.generation, staging)
        for name, data in parts.processor_files.items():
            _write_json(staging / name, data)
        (staging / CHAT_TEMPLATE_FILE).write_text(parts.chat_template, encoding="utf-8")
        _write_json(staging / tiny.BUILD_INFO_FILE, _build_info(family, seed, parts.class_name))
        _verify(staging, parts.class_name)
    return final
