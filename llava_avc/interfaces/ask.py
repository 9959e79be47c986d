"""One question about one image: the library side of `llava-avc ask` (and of the README demo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..algorithm.config import AVCConfig, default_config


@dataclass
class AskResult:
    answer: str
    method: str
    blind_tokens: Optional[list] = None
    details: dict = field(default_factory=dict)

    def report_lines(self) -> list[str]:
        """Human-readable facts about the run (printed to stderr by the CLI)."""
        lines = [f"method: {self.method}"]
        for row, record in enumerate(self.blind_tokens or []):
            lines.append(
                f"blind tokens: {record.num_blind} of {len(record.blind)} image tokens "
                f"(span {record.image_span[0]}..{record.image_span[1]}), selected layers {record.layers}"
            )
        if "heatmap" in self.details:
            lines.append(f"heatmap: {self.details['heatmap']}")
        return lines


def load_image(path: str):
    """Open an image file as RGB, with a clear error for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"image file {path!r} does not exist.")
    try:
        return Image.open(path).convert("RGB")
    except UnidentifiedImageError as error:
        raise ValueError(f"{path!r} is not an image PIL can read ({error}).") from error


def ask(model_path: str, image: str, query: str, *, method: str = "avc", model_base: Optional[str] = None,
        conv_mode: str = "llava_v1", device: Optional[str] = None, temperature: float = 0.0,
        top_p: Optional[float] = None, max_new_tokens: int = 64, seed: int = 42, config=None,
        loaded=None, load_4bit: bool = False, load_8bit: bool = False,
        heatmap: Optional[str] = None) -> AskResult:
    """Load (or reuse `loaded`, a pipeline), build the prompt, generate, decode the answer."""
    from ..backends import load_pipeline

    config = config if config is not None else default_config(method)
    pil_image = load_image(image)
    pipeline = loaded or load_pipeline(model_path, model_base, device=device, load_4bit=load_4bit,
                                       load_8bit=load_8bit)
    inputs = pipeline.inputs([query], [pil_image], conv_mode)
    torch.manual_seed(seed)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, return_dict_in_generate=True)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    output = pipeline.generate(inputs, config, **kwargs)
    answer = pipeline.decode(output.sequences, inputs)[0]
    records = getattr(output, "blind_tokens", None)
    details = {}
    if heatmap:
        records = records or pipeline.find_blind_tokens(inputs, AVCConfig())
        details["heatmap"] = draw_heatmap(pipeline, pil_image, records[0], heatmap)
    return AskResult(answer, method if config is not None else "none", records, details)


def draw_heatmap(pipeline, pil_image, record, out_path: str) -> str:
    """Save the blind-token picture of one record (LLaVA-1.6 anyres: the base image's grid)."""
    from .heatmap import draw_blind_tokens

    draw_blind_tokens(pil_image, record, grid=pipeline.token_grid(), out_path=out_path,
                      image_aspect_ratio=pipeline.image_aspect_ratio)
    return str(out_path)
