"""Blind-token heatmaps (llava_avc.interfaces.heatmap): size, mapping onto the original image, outlines."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from llava_avc import AVCConfig, find_blind_tokens  # noqa: E402
from llava_avc.algorithm.blind import BlindTokens  # noqa: E402
from llava_avc.interfaces.heatmap import draw_blind_tokens  # noqa: E402

from helpers import QUESTIONS, images_for, prompt_ids  # noqa: E402


def magenta_pixels(array: np.ndarray, box) -> int:
    """How many pixels of the outline colour (#ff00ff) lie inside box = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    patch = array[y0:y1, x0:x1].astype(int)
    return int(((patch[..., 0] > 200) & (patch[..., 1] < 60) & (patch[..., 2] > 200)).sum())


def shrink(box, by=2):
    x0, y0, x1, y1 = box
    return x0 + by, y0 + by, x1 - by, y1 - by


def make_record(n: int, blind_cells, layers=(0,)) -> BlindTokens:
    scores = torch.linspace(0.0, 1.0, n)
    blind = torch.zeros(n, dtype=torch.bool)
    blind[list(blind_cells)] = True
    return BlindTokens(image_span=(5, 5 + n), layers=list(layers), scores=scores, blind=blind)


def test_heatmap_of_the_tiny_model_marks_its_blind_tokens(tiny_llava, sample_image, tmp_path):
    tokenizer, model, image_processor, _ = tiny_llava
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0)
    images = images_for(model, image_processor, [sample_image])
    record = find_blind_tokens(model, ids, images, [sample_image.size], AVCConfig())[0]
    assert len(record.scores) == 576 and 0 < record.num_blind < 576

    out = tmp_path / "heat" / "blind.png"
    drawn = draw_blind_tokens(sample_image, record, out_path=out)
    assert out.is_file()
    with Image.open(out) as saved:
        assert saved.format == "PNG" and saved.size == sample_image.size == (512, 600)
        array = np.asarray(saved.convert("RGB"))
    assert drawn.size == sample_image.size
    assert np.abs(array.astype(int) - np.asarray(sample_image).astype(int)).mean() > 5  # not the plain photo

    # Grace Hopper is 512 x 600: expand2square pads 44 px on the left, so 24 x 24 cells of 25 px
    # start at x = -44 in the original image. Compare cells fully inside it, below the legend.
    def box(cell):
        row, col = divmod(cell, 24)
        return col * 25 - 44, row * 25, col * 25 - 44 + 25, row * 25 + 25

    inside = [c for c in range(576) if 0 <= box(c)[0] and box(c)[2] <= 512 and box(c)[1] >= 100]
    blind = [c for c in inside if record.blind[c]]
    seen = [c for c in inside if not record.blind[c]]
    assert blind and seen
    for cell in blind:
        assert magenta_pixels(array, box(cell)) >= 40, f"blind cell {cell} is not outlined"
    for cell in seen:
        assert magenta_pixels(array, shrink(box(cell), 1)) == 0, f"non-blind cell {cell} is outlined"


def test_padding_is_mapped_back_onto_a_landscape_image(tmp_path):
    # 300 x 200: expand2square makes 300 x 300 with 50 px of padding above and below; a 6 x 6
    # grid has 50 px cells, so cell (row 2, col 3) covers x 150..200, y 100 - 50 = 50..100.
    image = Image.new("RGB", (300, 200), (128, 128, 128))
    record = make_record(36, [2 * 6 + 3, 0])  # cell 0 lies entirely in the top padding
    drawn = np.asarray(draw_blind_tokens(image, record, out_path=tmp_path / "wide.png"))
    assert drawn.shape == (200, 300, 3)
    assert magenta_pixels(drawn, (150, 50, 200, 100)) >= 40
    assert magenta_pixels(drawn, (150, 100, 200, 150)) == 0  # the cell below is not blind
    assert magenta_pixels(drawn, (0, 0, 300, 200)) == magenta_pixels(drawn, (150, 50, 200, 100))  # nothing else


def test_anyres_record_needs_an_explicit_base_grid(tmp_path):
    image = Image.new("RGB", (120, 80), (40, 90, 160))
    record = make_record(64 + 150, [50, 64 + 7])  # base image 8 x 8 first, then tiles: not a square count
    with pytest.raises(ValueError, match="square grids"):
        draw_blind_tokens(image, record, out_path=tmp_path / "anyres.png")
    drawn = np.asarray(draw_blind_tokens(image, record, grid=8, image_aspect_ratio="anyres",
                                         out_path=tmp_path / "anyres.png"))
    # anyres resizes the base image to a square: cells are 15 x 10 px, cell 50 = (row 6, col 2);
    # token 71 belongs to a tile, not to the base image, and is not drawn.
    assert drawn.shape == (80, 120, 3)
    assert magenta_pixels(drawn, (30, 60, 45, 70)) >= 20
    assert magenta_pixels(drawn, (0, 0, 120, 80)) == magenta_pixels(drawn, (30, 60, 45, 70))
    with pytest.raises(ValueError, match="needs 400 image tokens"):
        draw_blind_tokens(image, record, grid=20, out_path=tmp_path / "bad.png")
