"""The llava-hf format's constants and `LlavaHFParts`, what the writer takes (docs/llava-hf-format.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
#: PIL's resample code of bicubic (CLIP's resize).
PIL_BICUBIC = 3
#: LLaVA's defaults: tokenizer length, CLIP layer whose features feed the projector (mm_vision_select_layer).
DEFAULT_MODEL_MAX_LENGTH = 2048
DEFAULT_VISION_FEATURE_LAYER = -2

#: LLaVA's conv_templates["llava_v1"].system.
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
#: Renders LLaVA's llava_v1 conversation (sep " ", sep2 "</s>", roles USER / ASSISTANT).
LLAVA_V1_CHAT_TEMPLATE = (
    r"{%- set system_message = '" + LLAVA_V1_SYSTEM.replace("'", "\\'") + r"' -%}"
    r"{%- if messages and messages[0]['role'] == 'system' -%}"
    r"{%- if messages[0]['content'] is string -%}{%- set system_message = messages[0]['content'] -%}"
    r"{%- else -%}{%- set system_message = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    r" | map(attribute='text') | join(' ') -%}{%- endif -%}"
    r"{%- set loop_messages = messages[1:] -%}"
    r"{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    r"{{- system_message + ' ' -}}"
    r"{%- for message in loop_messages -%}"
    r"{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set n_images = 0 -%}"
    r"{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text')"
    r" | map(attribute='text') | join(' ') -%}"
    r"{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    r"{%- endif -%}"
    r"{%- if message['role'] == 'user' -%}{{- 'USER: ' + '<image>\n' * n_images + text + ' ' -}}"
    r"{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + text + '</s>' -}}"
    r"{%- else -%}{{- raise_exception('llava_v1 has roles system (first), user and assistant, got '"
    r" + message['role']) -}}{%- endif -%}"
    r"{%- endfor -%}"
    r"{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


@dataclass
class LlavaHFParts:
    """Everything ``write_llava_hf`` needs, in the ORIGINAL LLaVA naming.

    Shapes (V = rows of the original vocabulary, H = LLM hidden, C = CLIP hidden):
    ``llm``: LlamaForCausalLM tensors, ``model.embed_tokens.weight`` [V, H], ``model.layers.*``,
    ``model.norm.weight`` [H], ``lm_head.weight`` [V, H]; ``projector``: LLaVA's mm_projector
    Sequential, ``0.weight`` [H, C], ``0.bias`` [H], ``2.weight`` [H, H], ``2.bias`` [H];
    ``vision``: CLIPVisionModel tensors (keys with or without ``vision_model.``);
    ``image_newline``: [H] for anyres, else None.
    """

    text_config: dict
    vision_config: dict
    llm: dict
    projector: dict
    vision: dict
    spm_proto: bytes
    image_side: int
    added_tokens: list = field(default_factory=list)  # [(content, special)] after the spm pieces
    pad_token: Optional[str] = None  # an existing distinct pad token, else <pad> is added
    add_bos_token: bool = True
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
    vision_feature_layer: int = DEFAULT_VISION_FEATURE_LAYER
    vision_feature_select_strategy: str = "default"
    image_mean: list = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))
    image_std: list = field(default_factory=lambda: list(OPENAI_CLIP_STD))
    resample: int = PIL_BICUBIC
    pad_to_square: bool = True  # LLaVA-1.5 image_aspect_ratio "pad"
    grid_pinpoints: Optional[list] = None  # anyres: transformers' [height, width] pairs
    image_newline: Optional[torch.Tensor] = None
    generation: dict = field(default_factory=dict)

