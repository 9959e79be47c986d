"""Draw AVC's blind tokens over the image: the per-token attention score as a heatmap, blind cells outlined.

    records = llava_avc.find_blind_tokens(model, input_ids, images, image_sizes, AVCConfig())
    draw_blind_tokens(pil_image, records[0], out_path="blind.png")

The PNG has the ORIGINAL image's width and height. Each image token is one cell of the vision
tower's patch grid (24 x 24 for LLaVA-1.5's 576 tokens), placed where its patch lies in the
original image, which depends on how LLaVA preprocessed the image (``image_aspect_ratio``):

- ``"pad"`` (LLaVA-1.5, the default): ``expand2square`` pads the shorter side symmetrically to a
  square, which is then resized to the grid. The grid covers the padded square; cells that fall
  in the padding lie outside the picture and are cropped away (the legend counts the blind ones).
- ``"anyres"`` (LLaVA-1.6): only the BASE image is drawn. Its tokens are the first ``side * side``
  of the record (LLaVA puts the base image's features before the tiles) and the base image is the
  original resized, not padded, to a square. Pass ``grid=side`` (e.g. 24 for 336 px / patch 14):
  an anyres record's token count is not a square, and without ``grid`` a ValueError says so.
- anything else (``None``, ``"square"``): CLIP's resize of the shortest edge + centre crop; the
  grid covers the central square of the image.

Rendering uses matplotlib's Agg canvas directly (no pyplot, no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserError

Grid = Union[int, Tuple[int, int]]
#: Outline colour of blind cells: magenta appears neither in the colour map (viridis) nor in photos
#: often, so the marks stay visible (and testable).
OUTLINE = "#ff00ff"


def _field(record, name: str):
    """A record attribute (BlindTokens) or key (its to_dict() form)."""
    return record[name] if isinstance(record, dict) else getattr(record, name)


def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def resolve_grid(num_tokens: int, grid: Optional[Grid] = None) -> Tuple[int, int]:
    """(rows, cols) of the patch grid drawn from a record of ``num_tokens`` image tokens.

    Raises:
        ValueError: no ``grid`` and ``num_tokens`` is not a perfect square (e.g. an anyres record),
            or a ``grid`` with more cells than the record has tokens.
    """
    if grid is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens or side == 0:
            raise UserError(
                f"heatmaps support LLaVA-1.5-style square grids (N = side x side image tokens, e.g. "
                f"576 = 24 x 24); this record has {num_tokens} image tokens, not a square (a LLaVA-1.6 "
                "anyres record?). To draw an anyres record's base image, which is its first side x side "
                "tokens, pass grid=side (24 for a 336 px vision tower with patch 14) and "
                "image_aspect_ratio='anyres'."
            )
        return side, side
    rows, cols = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if rows < 1 or cols < 1 or rows * cols > num_tokens:
        raise UserError(
            f"grid {rows} x {cols} needs {rows * cols} image tokens but the record has {num_tokens}; "
            "pass the vision tower's patch grid (e.g. 24 for 576 tokens)."
        )
    return rows, cols


def grid_region(image_size: Tuple[int, int], image_aspect_ratio: Optional[str] = "pad") -> Tuple[float, float, float, float]:
    """(x, y, width, height) in ORIGINAL image pixels of the square the patch grid covers.

    ``pad``: the expand2square square (it extends beyond the image on the shorter side);
    ``anyres``: the whole image (the base image is resized to a square, so cells are stretched);
    ``resize``: the whole image (Qwen's resize to a multiple of its patch grid, aspect ratio kept);
    otherwise: the central square kept by CLIP's shortest-edge resize and centre crop.
    """
    width, height = image_size
    if image_aspect_ratio == "pad":
        side = max(width, height)
        # expand2square pastes the image at ((side - width) // 2, (side - height) // 2).
        return -((side - width) // 2), -((side - height) // 2), side, side
    if image_aspect_ratio in ("anyres", "resize"):
        return 0, 0, width, height
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, side, side


def cell_box(cell: int, grid: Tuple[int, int], region: Sequence[float]) -> Tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in original image pixels of token ``cell`` (row-major) of the grid."""
    rows, cols = grid
    x, y, width, height = region
    row, col = divmod(cell, cols)
    cell_w, cell_h = width / cols, height / rows
    return x + col * cell_w, y + row * cell_h, x + (col + 1) * cell_w, y + (row + 1) * cell_h


def draw_blind_tokens(image, record, *, grid: Optional[Grid] = None, out_path,
                      image_aspect_ratio: Optional[str] = "pad", alpha: float = 0.45,
                      cmap: str = "viridis", outline: str = OUTLINE):
    """Save ``image`` with ``record.scores`` as a heatmap and the blind tokens outlined; return it.

    Args:
        image: the ORIGINAL PIL image the record was computed for (before LLaVA's preprocessing).
        record: a ``BlindTokens`` (``find_blind_tokens`` / ``generate(..., return_dict_in_generate=True)
            .blind_tokens``) or its ``to_dict()``: ``scores`` (N,), ``blind`` (N,), ``layers``.
        grid: patch grid side or (rows, cols); default: sqrt(N), which must be an integer.
        out_path: where the PNG is written (parent folders are created).
        image_aspect_ratio: how LLaVA preprocessed the image (``model.config.image_aspect_ratio``):
            "pad" (LLaVA-1.5), "anyres" (LLaVA-1.6 base image), else shortest-edge resize + crop.
        alpha: opacity of the heatmap; cmap: a matplotlib colour map; outline: blind cells' colour.
    Returns:
        The drawn RGB PIL image, of exactly ``image.size``.
    Raises:
        ValueError: the token count does not fit the grid (see ``resolve_grid``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from PIL import Image

    scores = _as_numpy(_field(record, "scores")).astype(np.float64).ravel()
    blind = _as_numpy(_field(record, "blind")).astype(bool).ravel()
    layers = [int(layer) for layer in _field(record, "layers")]
    if scores.shape != blind.shape:
        raise UserError(f"record has {scores.size} scores but {blind.size} blind flags; they must match.")
    total = scores.size
    rows, cols = resolve_grid(total, grid)
    count = rows * cols
    scores, blind = scores[:count], blind[:count]

    image = image.convert("RGB")
    width, height = image.size
    region = grid_region((width, height), image_aspect_ratio)
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(np.asarray(image), extent=(0, width, height, 0), interpolation="nearest")
    heat = scores.reshape(rows, cols)  # row-major, as the vision tower's patch sequence
    low, high = float(heat.min()), float(heat.max())
    x, y, region_w, region_h = region
    ax.imshow(heat, extent=(x, x + region_w, y + region_h, y), cmap=cmap, alpha=alpha,
              vmin=low, vmax=high if high > low else low + 1.0, interpolation="nearest")

    cell_px = min(region_w / cols, region_h / rows)
    line_px = max(1, round(cell_px / 10))
    inset = line_px / 2  # the stroke lies inside its own cell, never over a neighbour
    boxes, hidden = [], 0
    for cell in np.flatnonzero(blind):
        x0, y0, x1, y1 = cell_box(int(cell), (rows, cols), region)
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            hidden += 1  # in expand2square's padding: not part of the picture
            continue
        boxes.append(Rectangle((x0 + inset, y0 + inset), x1 - x0 - 2 * inset, y1 - y0 - 2 * inset))
    ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=outline,
                                      linewidths=line_px * 72 / dpi, antialiased=False, snap=False,
                                      zorder=4))  # above the legend: no blind cell is hidden
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)

    lines = [f"blind tokens: {int(blind.sum())} / {count} (outlined)"]
    if count < total:
        lines.append(f"base image: first {count} of {total} tokens")
    if hidden:
        lines.append(f"{hidden} blind in the padding (not shown)")
    lines.append(f"layers: {layers}; heat: attention")
    font_px = max(6.0, min(width / 30, height / 40, 14.0))
    ax.text(0.01, 0.995, "\n".join(lines), transform=ax.transAxes, ha="left", va="top", color="white",
            fontsize=font_px * 72 / dpi, linespacing=1.2, zorder=3,
            bbox=dict(facecolor="black", alpha=0.6, edgecolor="none", pad=2))

    canvas.draw()
    drawn = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    if drawn.size != (width, height):  # figure size rounding: never off by more than a pixel
        drawn = drawn.resize((width, height), Image.NEAREST)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(out_path, format="PNG")
    return drawn
