"""A tiny random LlavaLlamaForCausalLM built in memory, for `llava-avc doctor`'s run of the methods
(`llava_avc.backends.self_check`): no files, no network.

LLaVA's own constructor reads the CLIP tower's config from a path or the hub (`CLIPVisionTower` with
`delay_load`), so the model is built without `mm_vision_tower` and gets a loaded tower made from a
`CLIPVisionConfig` in memory, and its projector from LLaVA's own `build_vision_projector`.
"""

from __future__ import annotations

import torch

from ..self_check import SelfCheckCase

#: A 2-layer Llama and a 2-layer CLIP tower whose 56 px image with 14 px patches gives 16 image features.
TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56,
              patch_size=14, projection_dim=32)
MM = dict(mm_hidden_size=VISION["hidden_size"], mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
          mm_vision_select_feature="patch", image_aspect_ratio="pad", mm_patch_merge_type="flat",
          mm_use_im_start_end=False, mm_use_im_patch_token=False)
TOWER_NAME = "in-memory-clip"


def _vision_tower():
    """LLaVA's CLIPVisionTower, loaded, around a random CLIPVisionModel (its __init__ would read files)."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower = CLIPVisionTower.__new__(CLIPVisionTower)
    torch.nn.Module.__init__(tower)
    tower.vision_tower_name = TOWER_NAME
    tower.select_layer = MM["mm_vision_select_layer"]
    tower.select_feature = MM["mm_vision_select_feature"]
    tower.vision_tower = CLIPVisionModel(CLIPVisionConfig(**VISION))
    tower.is_loaded = True
    return tower


def _model():
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.multimodal_projector.builder import build_vision_projector

    config = LlavaConfig(**TEXT, **MM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaLlamaForCausalLM(config)  # no mm_vision_tower yet: LLaVA builds no tower
        model.get_model().vision_tower = _vision_tower()
        model.get_model().mm_projector = build_vision_projector(config)
    config.mm_vision_tower = TOWER_NAME
    model = model.float().eval()
    model.generation_config.eos_token_id = None  # every run makes the same number of tokens
    model.generation_config.pad_token_id = TEXT["pad_token_id"]
    return model


def self_check_cases() -> list:
    from llava.constants import IMAGE_TOKEN_INDEX

    input_ids = torch.tensor([[TEXT["bos_token_id"], 5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9]])
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, VISION["image_size"], VISION["image_size"], generator=generator)
    image_tokens = (VISION["image_size"] // VISION["patch_size"]) ** 2
    return [SelfCheckCase(
        model=_model(),
        inputs={"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "images": images,
                "image_sizes": [(VISION["image_size"], VISION["image_size"])]},
        what=f"LlavaLlamaForCausalLM ({image_tokens} image tokens)",
    )]
