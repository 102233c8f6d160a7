"""PNG pictures people look at: image/mask grids and loss curves (written atomically, like every output).

Cells are uint8 grayscale frames (H, W) or RGB images (H, W, 3) such as `colorize_mask` /
`colorize_condition` produce. Small frames are enlarged by an integer factor (nearest neighbour, so
pixels stay honest) until a cell is at least `min_cell` pixels wide.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from synthecho.io import write_bytes_atomic
from synthecho.real import MASK_PALETTE

# CAMUS mask colours (0 background, 1 LV, 2 myocardium, 3 LA): the palette the published masks carry.
MASK_COLOURS = np.array(MASK_PALETTE[:12], dtype=np.uint8).reshape(4, 3)
# 5-class conditioning maps: outside the sector black, background inside it dark grey, then LV/MYO/LA.
CONDITION_COLOURS = np.concatenate([np.array([[0, 0, 0], [70, 70, 70]], dtype=np.uint8), MASK_COLOURS[1:]])
HEADER_HEIGHT = 16
GAP = 2


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """CAMUS mask (H, W) with labels 0..3 -> RGB (H, W, 3) uint8."""
    mask = np.asarray(mask)
    if mask.size and int(mask.max()) >= len(MASK_COLOURS):
        raise ValueError(f"mask labels must be 0..3, got max {int(mask.max())}")
    return MASK_COLOURS[mask]


def colorize_condition(labels: np.ndarray) -> np.ndarray:
    """5-class conditioning map (H, W) with labels 0..4 (synthecho.labels) -> RGB (H, W, 3) uint8."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) >= len(CONDITION_COLOURS):
        raise ValueError(f"condition labels must be 0..4, got max {int(labels.max())}")
    return CONDITION_COLOURS[labels]


def _as_rgb(cell: np.ndarray) -> np.ndarray:
    cell = np.asarray(cell)
    if cell.dtype != np.uint8:
        raise ValueError(f"grid cells must be uint8, got {cell.dtype}")
    if cell.ndim == 2:
        return np.repeat(cell[:, :, None], 3, axis=2)
    if cell.ndim == 3 and cell.shape[2] == 3:
        return cell
    raise ValueError(f"grid cells must be (H, W) gray or (H, W, 3) RGB, got shape {cell.shape}")


def grid_image(rows: list[list[np.ndarray]], labels: list[str] | None = None, min_cell: int = 128):
    """Compose the grid as a PIL RGB image (rows may differ in length; missing cells stay black)."""
    from PIL import Image, ImageDraw

    if not rows or not any(rows):
        raise ValueError("save_grid needs at least one cell")
    cells = [[_as_rgb(cell) for cell in row] for row in rows]
    cell_h = max(cell.shape[0] for row in cells for cell in row)
    cell_w = max(cell.shape[1] for row in cells for cell in row)
    zoom = max(1, -(-min_cell // cell_w))  # ceil division: enlarge small frames by a whole factor
    cell_h, cell_w = cell_h * zoom, cell_w * zoom
    columns = max(len(row) for row in cells)
    header = HEADER_HEIGHT if labels else 0
    width = columns * cell_w + (columns - 1) * GAP
    height = header + len(cells) * cell_h + (len(cells) - 1) * GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            big = np.repeat(np.repeat(cell, zoom, axis=0), zoom, axis=1)
            canvas.paste(Image.fromarray(big, mode="RGB"), (c * (cell_w + GAP), header + r * (cell_h + GAP)))
    if labels:
        draw = ImageDraw.Draw(canvas)
        for c, text in enumerate(labels[:columns]):
            draw.text((c * (cell_w + GAP) + 3, 2), str(text), fill=(0, 0, 0))
    return canvas


def save_grid(
    rows: list[list[np.ndarray]], path: str | Path, labels: list[str] | None = None, min_cell: int = 128
) -> Path:
    """Write a grid of frames/masks as a PNG; `labels` are column titles drawn above the first row."""
    buffer = io.BytesIO()
    grid_image(rows, labels, min_cell).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def save_loss_curve(losses, path: str | Path, title: str = "training loss") -> Path:
    """Plot per-step losses (and a moving average) on a log axis into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    values = np.asarray(list(losses), dtype=np.float64)
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        steps = np.arange(1, len(values) + 1)
        axis.plot(steps, values, color="0.7", linewidth=0.8, label="per step")
        window = max(1, min(50, len(values) // 10))
        if len(values) >= 2 * window > 2:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            axis.plot(steps[window - 1 :], smooth, color="C0", linewidth=1.5, label=f"mean of {window}")
        if len(values) and np.all(values > 0) and values.max() > 10 * values.min():  # log only if it spans
            axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.set_title(title)
        axis.legend(loc="upper right", fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)
