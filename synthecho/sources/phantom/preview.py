"""`phantom_preview.png`: a grid to look at the phantom as a reader of echo would."""

from __future__ import annotations

import io

import numpy as np

from synthecho.sources.phantom.cohort import VIEWS

CONTOUR_COLOURS = {1: (255, 64, 64), 2: (64, 255, 64), 3: (64, 160, 255)}  # LV red, MYO green, LA blue


def contour_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(image[..., None], 3, axis=2)
    for label, colour in CONTOUR_COLOURS.items():
        inside = mask == label
        padded = np.pad(inside, 1, mode="edge")
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        rgb[inside & ~interior] = colour
    return rgb


def preview_png(previews) -> bytes:
    """One row per patient; columns 2CH ED, 2CH ES, 4CH ED, 4CH ES, each plain and with the `_gt` contours.

    The row title gives sex, age and EF; each panel its view, instant, image quality and LV family.
    """
    from PIL import Image, ImageDraw

    height, width = previews[0][2]["2CH"].images.shape[1:]
    header, gap = 14, 2
    columns = [(view, instant) for view in VIEWS for instant in ("ED", "ES")]
    row_height = height + header
    canvas = Image.new("RGB", (len(columns) * 2 * (width + gap), len(previews) * row_height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for row, (pid, attributes, records) in enumerate(previews):
        top = row * row_height
        draw.text(
            (2, top + 1),
            f"{pid}  {attributes.sex} {attributes.age}y  EF {attributes.ef}",
            fill=(230, 230, 230),
        )
        for col, (view, instant) in enumerate(columns):
            record = records[view]
            index = (record.ed if instant == "ED" else record.es) - 1
            image, mask = record.images[index], record.masks[index]
            left = col * 2 * (width + gap)
            canvas.paste(Image.fromarray(image).convert("RGB"), (left, top + header))
            canvas.paste(Image.fromarray(contour_overlay(image, mask)), (left + width + gap, top + header))
            draw.text((left + 2, top + header + 2), f"{view} {instant} {record.quality}", fill=(255, 255, 0))
            if instant == "ED":
                draw.text((left + width + gap + 2, top + header + 2), record.family, fill=(255, 255, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
