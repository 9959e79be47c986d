"""Tiny random llava-hf models built in memory, for `llava-avc doctor`'s run of the methods
(`llava_avc.backends.self_check`): LLaVA-1.5 and LLaVA-NeXT classes, no files, no network."""

from __future__ import annotations

import torch

from ..self_check import SelfCheckCase

#: Sizes of the in-memory models: a 2-layer Llama and a 2-layer CLIP tower whose 56 px image with
#: 14 px patches gives 4 x 4 = 16 image features (the "default" feature strategy drops CLS).
TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56,
              patch_size=14, projection_dim=32)
IMAGE_TOKEN_ID = 127
#: LLaVA-NeXT: a 56 x 112 image becomes the base view plus two 56 px tiles (anyres), unpadded, newline rows.
NEXT_PINPOINTS = [[56, 56], [56, 112], [112, 56]]
NEXT_IMAGE_SIZE = (56, 112)  # (height, width)


def _model(next_: bool):
    import transformers
    from transformers import CLIPVisionConfig, LlamaConfig

    common = dict(vision_config=CLIPVisionConfig(**VISION), text_config=LlamaConfig(**TEXT),
                  image_token_index=IMAGE_TOKEN_ID, vision_feature_layer=-2,
                  vision_feature_select_strategy="default", projector_hidden_act="gelu")
    if next_:
        config, model_class = (transformers.LlavaNextConfig(image_grid_pinpoints=NEXT_PINPOINTS, **common),
                               transformers.LlavaNextForConditionalGeneration)
    else:
        config, model_class = transformers.LlavaConfig(**common), transformers.LlavaForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config).float().eval()
    model.generation_config.eos_token_id = None  # every run makes the same number of tokens
    model.generation_config.pad_token_id = TEXT["pad_token_id"]
    return model


def _case(next_: bool) -> SelfCheckCase:
    from ..families import family_of

    model = _model(next_)
    generator = torch.Generator().manual_seed(0)
    side = VISION["image_size"]
    if next_:  # (1, views, 3, side, side): the base view and the two tiles of a 56 x 112 image
        images = {"pixel_values": torch.randn(1, 3, 3, side, side, generator=generator),
                  "image_sizes": torch.tensor([NEXT_IMAGE_SIZE])}
    else:
        images = {"pixel_values": torch.randn(1, 3, side, side, generator=generator)}
    with torch.no_grad():  # as many image tokens as the model's own merge makes features
        features, _ = family_of(model).image_features(model, images["pixel_values"], images.get("image_sizes"))
        image_tokens = features.shape[0]
    input_ids = torch.tensor([[TEXT["bos_token_id"], 5, 6] + [IMAGE_TOKEN_ID] * image_tokens + [7, 8, 9]])
    return SelfCheckCase(
        model=model,
        inputs={"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **images},
        what=f"{type(model).__name__} ({image_tokens} image tokens)",
    )


def self_check_cases() -> list:
    return [_case(next_=False), _case(next_=True)]
