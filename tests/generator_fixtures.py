"""A tiny real split for generator tests: the shapes a label-map-guided model can learn in a few steps."""

from __future__ import annotations

import numpy as np

from synthecho import labels as lab
from synthecho.real import RealSplit

RES = 16
PROMPTS = [
    (
        "Two-chamber view of the heart at end of the diastole cycle of a fifty-year-old male with good "
        "image quality."
    ),
    (
        "Four-chamber view of the heart at end of the systole cycle of an eighty-year-old female with poor "
        "image quality."
    ),
]


def fake_real(count: int = 6, resolution: int = RES, seed: int = 0) -> RealSplit:
    """Fan-shaped sector (0 outside), a dark LV ellipse in a myocardium ring, an LA band; view, phase and
    prompt alternate per row (2CH/ED, 4CH/ES)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:resolution, 0:resolution]
    sector = (rows >= 1) & (np.abs(cols - resolution / 2 + 0.5) <= rows * 0.6 + 1)
    images, masks, records = [], [], []
    for i in range(count):
        cy, cx = resolution * 0.45 + rng.uniform(-1, 1), resolution / 2 + rng.uniform(-1, 1)
        distance = ((rows - cy) / (resolution * 0.25)) ** 2 + ((cols - cx) / (resolution * 0.15)) ** 2
        mask = np.zeros((resolution, resolution), np.uint8)
        mask[distance < 1.6] = lab.MYO
        mask[distance < 1] = lab.LV
        mask[rows > resolution * 0.8] = lab.LA
        mask[~sector] = 0
        image = np.clip(rng.normal(120, 30, mask.shape), 1, 255)
        image[mask == lab.LV] = 15
        images.append(np.where(sector, image, 0).astype(np.uint8))
        masks.append(mask)
        view, phase = ("2CH", "ED") if i % 2 == 0 else ("4CH", "ES")
        records.append(
            {
                "id": f"fake/{i:03d}",
                "patient": f"p{i}",
                "view": view,
                "phase": phase,
                "prompt": PROMPTS[i % 2],
            }
        )
    return RealSplit("train", records, np.stack(images), np.stack(masks), np.stack([sector] * count))
