"""One question about one image: the library side of `llava-avc ask` (and of the README demo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..algorithm.config import AVCConfig
from ..decode.methods import default_config
from ..eval.inputs import check_png_file, check_query, open_rgb


@dataclass
class AskResult:
    answer: str
    method: str
    blind_tokens: Optional[list] = None  # AVC's records, one per row (None for the other methods)
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
            note = "" if self.method == "avc" else \
                f" (the blind tokens AVC would use for this image; {self.method} itself uses none)"
            lines.append(f"heatmap: {self.details['heatmap']}{note}")
        return lines


def load_image(path: str):
    """Open an image file as RGB, with a one-line error naming the file when it is missing, a
    directory, not an image, damaged (e.g. a truncated JPEG) or too small."""
    return open_rgb(path)


def ask(model_path: str, image: str, query: str, *, method: str = "avc", model_base: Optional[str] = None,
        conv_mode: Optional[str] = None, device: Optional[str] = None, temperature: float = 0.0,
        top_p: Optional[float] = None, max_new_tokens: int = 64, seed: int = 42, config=None,
        loaded=None, load_4bit: bool = False, load_8bit: bool = False,
        heatmap: Optional[str] = None) -> AskResult:
    """Load (or reuse `loaded`, a pipeline), build the prompt, generate, decode the answer.

    Everything that can be checked without the model (the question, the sampling settings, the image,
    the heatmap path, the device, the checkpoint's files and the conversation template of its backend)
    is checked before it loads. `conv_mode` None: the backend's default (LLaVA's llava_v1; a llava-hf
    checkpoint's own chat template).
    """
    from ..backends import load_pipeline
    from ..decode.sampling import check_sampling

    config = config if config is not None else default_config(method)
    check_query(query, "query")
    check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    if heatmap:
        check_png_file(heatmap, "--heatmap")
    pil_image = load_image(image)
    if loaded is None:
        pipeline = load_pipeline(model_path, model_base, conv_mode, device=device, load_4bit=load_4bit,
                                 load_8bit=load_8bit)
    else:
        pipeline = loaded
        pipeline.check_conv_mode(conv_mode)
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
        drawn = records or pipeline.find_blind_tokens(inputs, AVCConfig())
        details["heatmap"] = draw_heatmap(pipeline, pil_image, drawn[0], heatmap)
    return AskResult(answer, method if config is not None else "none", records, details)


def draw_heatmap(pipeline, pil_image, record, out_path: str) -> str:
    """Save the blind-token picture of one record (LLaVA-1.6 anyres: the base image's grid)."""
    from .heatmap import draw_blind_tokens

    try:
        draw_blind_tokens(pil_image, record, grid=pipeline.token_grid(pil_image), out_path=out_path,
                          image_aspect_ratio=pipeline.image_aspect_ratio)
    except OSError as error:
        raise OSError(error.errno, f"cannot write the heatmap {out_path} ({error.strerror or error})") from None
    return str(out_path)
