"""The phantom's variety held in bands: benchmarks/phantom_stats.py on a small cohort.

Each statistic (tilt spread, apex offset, structures at the sector edge, per-view quality shares, area
change, EF of labels and truth, label-vs-render Dice against the CAMUS-derived target, ED/ES speckle
correlation, shape-word shares) must lie in the band `BANDS` states for it, so a change that undoes the
variety fails here. Positive controls: a copy of ED as ES, and labels replaced by the truth, are caught.
The phantom of before this variety (tilt 8 +- 2 deg, apex on the axis, ED/ES texture 80 % shared, one LV
shape) fails 9 of the bands (docs/phantom.md).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATIENTS = 20


def load_benchmark():
    spec = importlib.util.spec_from_file_location("phantom_stats", REPO / "benchmarks" / "phantom_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


@pytest.fixture(scope="module")
def cohort(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    root = bench.write_cohort(out, PATIENTS, seed=1, size=(192, 160))
    return out, root


def test_every_statistic_lies_in_its_band(bench, cohort):
    out, root = cohort
    flat = bench.summary(bench.measure(root, out, seed=1))
    assert set(flat) == set(bench.BANDS)  # every band is measured, nothing unbanded
    outside = {name: value for name, value in flat.items() if not bench.in_band(name, value)}
    assert outside == {}, outside


def test_the_bands_catch_copied_texture_and_noise_free_labels(bench, cohort, tmp_path):
    out, _ = cohort
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for folder in sorted((copy / "CAMUS_public" / "database_nifti").iterdir()):
        for view in ("2CH", "4CH"):
            stem = folder / f"{folder.name}_{view}"
            # ES texture copied from ED (the old phantom's near-copies), and labels equal to the truth
            shutil.copyfile(f"{stem}_ED.nii.gz", f"{stem}_ES.nii.gz")
            for phase in ("ED", "ES"):
                truth = copy / "truth" / f"{folder.name}_{view}_{phase}.png"
                if truth.is_file():
                    write_mask(truth, Path(f"{stem}_{phase}_gt.nii.gz"))
    flat = bench.summary(bench.measure(copy / "CAMUS_public", copy, seed=1))
    assert not bench.in_band("speckle_fixed", flat["speckle_fixed"])
    assert not bench.in_band("dice_margin", flat["dice_margin"])


def write_mask(png: Path, target: Path) -> None:
    """Overwrite a `_gt` file with a truth PNG, keeping the header (spacing) of the file it replaces."""
    import SimpleITK as sitk

    from synthecho.real import decode_png

    old = sitk.ReadImage(str(target))
    image = sitk.GetImageFromArray(decode_png(png.read_bytes()))
    image.CopyInformation(old)
    sitk.WriteImage(image, str(target), useCompression=True)
