"""The inputs a family's processor makes, for the tests of the families (tests/test_families.py) and the
decode benchmark (`scripts/bench_decode.py --family`).

Qwen2.5-VL's, Qwen3-VL's and LLaVA-OneVision's `AutoProcessor` also load a video processor, which needs
torchvision. Where torchvision imports beside torch (the hf-vision test profile), `FamilyInputs(...,
processor=True)` uses the checkpoint's real processor. Where it does not (a CPU torch: PyPI's torchvision
wheels are CUDA builds that need their own torch), `processor=False` makes the same tensors from the
checkpoint's own pieces: the tokenizer's chat template, the image processor (its PIL backend), and as many
image placeholder tokens per image as the model's own `get_image_features` gives features (what the processor
computes). tests/test_family_processors.py checks on the hf-vision profile that both give equal tensors.
InstructBLIP's processor needs no torchvision and is always used as it is, except that its Q-Former text is
padded on the right (the processor pads it on the main tokenizer's side, which shifts the Q-Former's positions
in a left-padded batch).
"""

from __future__ import annotations

import torch

#: The processor output that carries each family's image sizes or grids.
IMAGE_INFO = {"llava_onevision": "image_sizes", "qwen2_5_vl": "image_grid_thw", "qwen3_vl": "image_grid_thw"}


def torchvision_importable() -> bool:
    """Whether torchvision imports beside this torch (so that every family's AutoProcessor loads)."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):  # a torchvision built for another torch fails with RuntimeError
        return False
    return True


class FamilyInputs:
    """`processor_inputs(images, questions)` of one checkpoint directory: through its `AutoProcessor`
    (`processor=True`; needs torchvision except for InstructBLIP) or built from its tokenizer and image
    processor (`processor=False`)."""

    def __init__(self, family: str, directory, model, processor: bool = False):
        import transformers

        self.family, self.model = family, model
        self.uses_processor = processor or family == "instructblip"
        if self.uses_processor:
            self.processor = transformers.AutoProcessor.from_pretrained(directory)
            self.processor.tokenizer.padding_side = "left"
            self.tokenizer = self.processor.tokenizer
        else:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(directory, padding_side="left")
            self.image_processor = transformers.AutoImageProcessor.from_pretrained(directory)

    def prompt(self, question: str, images: int = 1) -> str:
        """The chat template's prompt with `images` images (InstructBLIP: the question itself)."""
        if self.family == "instructblip":
            return question
        content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
        template = self.processor if self.uses_processor else self.tokenizer
        return template.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            tokenize=False)

    def __call__(self, images: list, texts: list) -> dict:
        """The processor's batch for `texts` (prompts, each with its images' placeholders) and `images` in order."""
        if self.uses_processor:
            batch = dict(self.processor(images=images or None, text=texts, return_tensors="pt", padding=True))
            if self.family == "instructblip":
                qformer = self.processor.qformer_tokenizer(texts, padding=True, padding_side="right",
                                                           return_tensors="pt")
                batch["qformer_input_ids"], batch["qformer_attention_mask"] = qformer["input_ids"], qformer["attention_mask"]
            return batch
        pixels = dict(self.image_processor(images=images, return_tensors="pt")) if images else {}
        counts = iter(self._feature_counts(pixels))
        expanded = [self._expand(text, counts) for text in texts]
        batch = dict(self.tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False))
        batch.update({key: value for key, value in pixels.items() if key in ("pixel_values", IMAGE_INFO[self.family])})
        if self.family.startswith("qwen"):
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.model.config.image_token_id).int()
        return batch

    def _feature_counts(self, pixels: dict) -> list:
        """Image features per image, as the model's own `get_image_features` makes them."""
        if not pixels:
            return []
        info = pixels[IMAGE_INFO[self.family]]
        with torch.no_grad():
            output = self.model.model.get_image_features(pixel_values=pixels["pixel_values"],
                                                         **{IMAGE_INFO[self.family]: info})
        return [feature.shape[0] for feature in output.pooler_output]

    def _expand(self, text: str, counts) -> str:
        """Each image placeholder of the prompt repeated as many times as its image gives features."""
        placeholder = self.tokenizer.convert_ids_to_tokens(int(self.model.config.image_token_id))
        parts = text.split(placeholder)
        return parts[0] + "".join(placeholder * next(counts) + part for part in parts[1:])
