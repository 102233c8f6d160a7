"""The built-in CAMUS-format phantom: file layout, cfg contents, determinism, anatomy, motion, quality,
label noise and the truth files."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from synthecho.errors import SynthechoError
from synthecho.io import sha256_file
from synthecho.labels import sector_from_image
from synthecho.metrics import dice
from synthecho.sources.phantom import (
    CAMUS_QUALITY_COUNTS,
    phantom_id_map,
    phantom_splits,
    read_truth,
    sample_patient,
    single_plane_volume,
    truth_path,
    write_phantom,
)

SIZE = (64, 56)
FRAMES = (3, 5)
PATIENTS = 8
CFG_2023_KEYS = ["ED", "ES", "NbFrame", "Sex", "Age", "ImageQuality", "EF", "FrameRate"]
CFG_2019_KEYS = ["ED", "ES", "NbFrame", "Sex", "Age", "ImageQuality", "LVedv", "LVesv", "LVef"]


@pytest.fixture(scope="module")
def tree_2023(tmp_path_factory) -> Path:
    return write_phantom(
        tmp_path_factory.mktemp("p2023"), patients=PATIENTS, seed=7, size=SIZE, frames=FRAMES
    )


@pytest.fixture(scope="module")
def tree_2019(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("p2019")
    return write_phantom(
        out, patients=PATIENTS, seed=7, layout="2019", size=SIZE, frames=FRAMES, preview=False
    )


def read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def read_cfg(path: Path) -> tuple[list[str], dict[str, str]]:
    text = path.read_text()
    assert text.endswith("\n") and "\r" not in text
    pairs = [line.split(": ", 1) for line in text.splitlines()]
    return [key for key, _ in pairs], dict(pairs)


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def labelled_frames(tree: Path):
    """Every (image, mask, spacing, name) pair of the 2023 tree: ED/ES files and every half-sequence frame."""
    for folder in sorted((tree / "database_nifti").iterdir()):
        for view in ("2CH", "4CH"):
            stem = folder / f"{folder.name}_{view}"
            for instant in ("ED", "ES"):
                image, spacing = read(Path(f"{stem}_{instant}.nii.gz"))
                mask, _ = read(Path(f"{stem}_{instant}_gt.nii.gz"))
                yield image, mask, spacing, f"{stem.name}_{instant}"
            images, spacing = read(Path(f"{stem}_half_sequence.nii.gz"))
            masks, _ = read(Path(f"{stem}_half_sequence_gt.nii.gz"))
            for t, (image, mask) in enumerate(zip(images, masks, strict=True)):
                yield image, mask, spacing, f"{stem.name}_frame{t}"


# ---------------------------------------------------------------------------------------------------------
# Layout and cfg files
# ---------------------------------------------------------------------------------------------------------


def test_2023_layout_files_cfg_and_splits(tree_2023: Path):
    assert tree_2023.name == "CAMUS_public"
    patients = sorted(p.name for p in (tree_2023 / "database_nifti").iterdir())
    assert patients == [f"patient{i:04d}" for i in range(1, PATIENTS + 1)]
    for pid in patients:
        folder = tree_2023 / "database_nifti" / pid
        expected = {"Info_2CH.cfg", "Info_4CH.cfg"}
        for view in ("2CH", "4CH"):
            for suffix in ("ED", "ES", "ED_gt", "ES_gt", "half_sequence", "half_sequence_gt"):
                expected.add(f"{pid}_{view}_{suffix}.nii.gz")
        assert {p.name for p in folder.iterdir()} == expected
        shared = None
        for view in ("2CH", "4CH"):
            keys, cfg = read_cfg(folder / f"Info_{view}.cfg")
            assert keys == CFG_2023_KEYS
            n_frames = int(cfg["NbFrame"])
            assert FRAMES[0] <= n_frames <= FRAMES[1]
            assert {int(cfg["ED"]), int(cfg["ES"])} == {1, n_frames}  # 1-based, one end each
            assert cfg["Sex"] in ("M", "F") and cfg["ImageQuality"] in ("Good", "Medium", "Poor")
            assert 18 <= int(cfg["Age"]) <= 88 and 20 <= int(cfg["EF"]) <= 75
            assert re.fullmatch(r"\d+", cfg["Age"]) and re.fullmatch(r"\d+", cfg["EF"])
            assert re.fullmatch(r"\d+\.\d", cfg["FrameRate"]) and 40.0 <= float(cfg["FrameRate"]) <= 75.0
            images, spacing = read(folder / f"{pid}_{view}_half_sequence.nii.gz")
            assert images.shape == (n_frames, *SIZE) and images.dtype == np.uint8
            assert spacing[2] == pytest.approx(1.0)
            ed_image, ed_spacing = read(folder / f"{pid}_{view}_ED.nii.gz")
            assert ed_image.shape == SIZE  # NIfTI ED/ES are 2-D
            np.testing.assert_array_equal(ed_image, images[int(cfg["ED"]) - 1])
            # Anisotropic (lateral coarser than depth), ~15 cm deep, read from the header.
            assert ed_spacing[0] > 1.2 * ed_spacing[1]
            assert 140.0 <= ed_spacing[1] * (SIZE[0] - 1) <= 160.0
            attributes = (cfg["Sex"], cfg["Age"], cfg["EF"])  # image quality is graded per view
            assert shared in (None, attributes)  # both views describe the same patient
            shared = attributes

    split_dir = tree_2023 / "database_split"
    splits = {}
    for name in ("training", "validation", "testing"):
        raw = (split_dir / f"subgroup_{name}.txt").read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        splits[name] = raw.decode().splitlines()
        assert splits[name] and all(re.fullmatch(r"patient\d{4}", i) for i in splits[name])
    everyone = splits["training"] + splits["validation"] + splits["testing"]
    assert sorted(everyone) == patients and len(set(everyone)) == PATIENTS  # disjoint and covering
    assert splits == phantom_splits(PATIENTS, 7)


def test_splits_are_shuffled_and_roughly_70_15_15():
    for patients in (3, 12, 40, 100):
        splits = phantom_splits(patients, seed=0)
        sizes = {name: len(ids) for name, ids in splits.items()}
        assert min(sizes.values()) >= 1 and sum(sizes.values()) == patients
        assert sizes["training"] >= 0.6 * patients - 1
        for ids in splits.values():
            numbers = [int(i[-4:]) for i in ids]
            if len(numbers) >= 2:
                assert numbers[-1] - numbers[0] != len(numbers) - 1, f"contiguous split {ids}"
    assert phantom_splits(40, 0) != phantom_splits(40, 1)


def test_2019_layout_singleton_axis_and_no_testing_gt(tree_2019: Path):
    id_map = phantom_id_map(PATIENTS, 7)
    training = sorted(p.name for p in (tree_2019 / "training").iterdir())
    testing = sorted(p.name for p in (tree_2019 / "testing").iterdir())
    assert training[0] == testing[0] == "patient0001"  # ids restart in testing
    assert {f"training/{p}" for p in training} | {f"testing/{p}" for p in testing} == set(id_map)
    for folder_name, pids in (("training", training), ("testing", testing)):
        for pid in pids:
            folder = tree_2019 / folder_name / pid
            names = {p.name for p in folder.iterdir()}
            expected = {"Info_2CH.cfg", "Info_4CH.cfg"}
            for view in ("2CH", "4CH"):
                stems = ["ED", "ES", "sequence"] + (["ED_gt", "ES_gt"] if folder_name == "training" else [])
                expected |= {f"{pid}_{view}_{s}.{ext}" for s in stems for ext in ("mhd", "raw")}
            assert names == expected
            for view in ("2CH", "4CH"):
                keys, cfg = read_cfg(folder / f"Info_{view}.cfg")
                assert keys == CFG_2019_KEYS
                assert float(cfg["LVesv"]) < float(cfg["LVedv"])
                header = (folder / f"{pid}_{view}_ED.mhd").read_text()
                assert f"DimSize = {SIZE[1]} {SIZE[0]} 1" in header and "MET_UCHAR" in header
                image = sitk.ReadImage(str(folder / f"{pid}_{view}_ES.mhd"))
                assert image.GetSize() == (SIZE[1], SIZE[0], 1)
                sequence, _ = read(folder / f"{pid}_{view}_sequence.mhd")
                assert sequence.shape == (int(cfg["NbFrame"]), *SIZE)


def test_both_layouts_hold_the_same_patients(tree_2023: Path, tree_2019: Path):
    for id_2019, id_2023 in phantom_id_map(PATIENTS, 7).items():
        folder_2019 = tree_2019 / id_2019
        pid_2019 = id_2019.split("/")[1]
        folder_2023 = tree_2023 / "database_nifti" / id_2023
        for view in ("2CH", "4CH"):
            _, cfg_2019 = read_cfg(folder_2019 / f"Info_{view}.cfg")
            _, cfg_2023 = read_cfg(folder_2023 / f"Info_{view}.cfg")
            for key in ("ED", "ES", "NbFrame", "Sex", "Age", "ImageQuality"):
                assert cfg_2019[key] == cfg_2023[key]
            assert float(cfg_2019["LVef"]) == float(cfg_2023["EF"])
            for instant in ("ED", "ES"):
                image_2019, spacing_2019 = read(folder_2019 / f"{pid_2019}_{view}_{instant}.mhd")
                image_2023, spacing_2023 = read(folder_2023 / f"{id_2023}_{view}_{instant}.nii.gz")
                np.testing.assert_array_equal(image_2019[0], image_2023)
                assert spacing_2019[:2] == pytest.approx(spacing_2023, rel=1e-6)
                if id_2019.startswith("training/"):
                    mask_2019, _ = read(folder_2019 / f"{pid_2019}_{view}_{instant}_gt.mhd")
                    mask_2023, _ = read(folder_2023 / f"{id_2023}_{view}_{instant}_gt.nii.gz")
                    np.testing.assert_array_equal(mask_2019[0], mask_2023)
    testing_2023 = phantom_splits(PATIENTS, 7)["testing"]
    assert (
        sorted(v for k, v in phantom_id_map(PATIENTS, 7).items() if k.startswith("testing/")) == testing_2023
    )


@pytest.mark.parametrize("layout", ["2023", "2019"])
def test_same_seed_gives_byte_identical_files(tmp_path: Path, layout: str):
    kwargs = dict(patients=4, seed=3, layout=layout, size=(48, 40), frames=(2, 3))
    write_phantom(tmp_path / "a", **kwargs)  # rendered by worker processes (synthecho.parallel)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SYNTHECHO_WORKERS", "1")  # ... and here in this process: the same bytes
        write_phantom(tmp_path / "b", **kwargs)
    write_phantom(tmp_path / "c", **{**kwargs, "seed": 4})
    first, second, other = (file_hashes(tmp_path / name) for name in ("a", "b", "c"))
    assert first == second
    assert "phantom_preview.png" in first and not any(".phantom-staging" in name for name in first)
    assert set(first) == set(other) and first != other  # the seed matters
    for name in first:
        if name.endswith(".nii.gz"):
            raw = (tmp_path / "a" / name).read_bytes()
            assert raw[4:8] == b"\x00\x00\x00\x00", f"{name}: gzip header carries a timestamp"
            gzip.decompress(raw)


def test_bad_arguments_and_stale_folders_raise(tmp_path: Path):
    with pytest.raises(SynthechoError, match="at least 3 patients"):
        write_phantom(tmp_path, patients=2, size=(48, 40))
    with pytest.raises(SynthechoError, match="layout"):
        write_phantom(tmp_path, patients=3, layout="2021", size=(48, 40))
    (tmp_path / "CAMUS_public" / "database_nifti" / "patient0099").mkdir(parents=True)
    with pytest.raises(SynthechoError, match="patient0099"):
        write_phantom(tmp_path, patients=3, size=(48, 40), frames=(2, 2), preview=False)


# ---------------------------------------------------------------------------------------------------------
# Anatomy, fan, motion
# ---------------------------------------------------------------------------------------------------------


def test_masks_are_plausible_and_inside_the_fan(tree_2023: Path):
    height, width = SIZE
    n_checked = 0
    for image, mask, _, name in labelled_frames(tree_2023):
        assert image.dtype == np.uint8 and mask.dtype == np.uint8, name
        assert set(np.unique(mask).tolist()) == {0, 1, 2, 3}, name
        rows = np.arange(height)[:, None].repeat(width, axis=1)
        assert rows[mask == 1].mean() < rows[mask == 3].mean(), f"{name}: LA not below LV"
        assert rows[(mask == 1) | (mask == 2)].min() < height / 3, f"{name}: apex not in the top third"
        # The fan: each row's non-zero pixels form one run centred on the axis, widening with depth,
        # narrow at the apex; everything else is exactly 0.
        runs = []
        for row in image:
            columns = np.nonzero(row)[0]
            if len(columns):
                assert columns[-1] - columns[0] + 1 == len(columns), f"{name}: hole in the fan"
                assert abs(columns[0] + columns[-1] - (width - 1)) <= 2, f"{name}: fan not centred"
                runs.append(len(columns))
        assert len(runs) == height and runs[0] < 0.25 * width
        assert max(runs) > 0.9 * width and np.argmax(runs) > height / 2
        assert image[0, 0] == image[0, -1] == image[-1, 0] == image[-1, -1] == 0
        assert not np.any((mask > 0) & ~sector_from_image(image)), f"{name}: labels outside the fan"
        n_checked += 1
    assert n_checked >= PATIENTS * 2 * (2 + FRAMES[0])


def test_four_chamber_shows_unlabelled_right_heart(tree_2023: Path):
    # Just left of the septum (image left) the 4CH has the dark RV pool, labelled 0; in the 2CH the same
    # place holds mid-grey tissue. Compare the mean intensity of a 12 mm strip beside the LV wall.
    def strip_mean(image, mask, spacing) -> float:
        rows = np.nonzero((mask == 1).any(axis=1))[0]
        values = []
        for row in range(int(np.quantile(rows, 0.3)), int(np.quantile(rows, 0.7)) + 1):
            wall = np.nonzero(mask[row] == 2)[0]
            if not len(wall):  # the wall of this row is cut by the sector edge
                continue
            wall_start = wall.min()
            width = int(np.ceil(12.0 / spacing[0]))
            values.extend(
                image[row, max(wall_start - width, 0) : wall_start][
                    mask[row, max(wall_start - width, 0) : wall_start] == 0
                ]
            )
        return float(np.mean(values))

    darker = []
    for folder in sorted((tree_2023 / "database_nifti").iterdir()):
        means = {}
        for view in ("2CH", "4CH"):
            image, spacing = read(folder / f"{folder.name}_{view}_ED.nii.gz")
            mask, _ = read(folder / f"{folder.name}_{view}_ED_gt.nii.gz")
            means[view] = strip_mean(image, mask, spacing)
        darker.append(means["4CH"] < means["2CH"])
    assert np.mean(darker) >= 0.75


def test_reversed_sequence_exists_and_is_consistent(tree_2023: Path):
    reversed_views = []
    for folder in sorted((tree_2023 / "database_nifti").iterdir()):
        _, cfg = read_cfg(folder / "Info_4CH.cfg")
        if int(cfg["ED"]) == int(cfg["NbFrame"]) and int(cfg["ES"]) == 1:
            reversed_views.append(folder)
    assert reversed_views, "no reversed 4CH sequence"
    folder = reversed_views[0]
    masks, _ = read(folder / f"{folder.name}_4CH_half_sequence_gt.nii.gz")
    lv_area = (masks == 1).sum(axis=(1, 2))
    assert lv_area[-1] > lv_area[0]  # the last frame is ED (largest cavity)
    es_mask, _ = read(folder / f"{folder.name}_4CH_ES_gt.nii.gz")
    np.testing.assert_array_equal(es_mask, masks[0])


def area_length_volume(mask: np.ndarray, spacing) -> float:
    """`single_plane_volume` with SimpleITK's (lateral, depth) spacing."""
    return single_plane_volume(mask, (spacing[1], spacing[0]))


def test_contraction_follows_the_ejection_fraction(tmp_path: Path):
    # Every patient but the 2 validation ones and 1 training patient is a test patient: it has truth.
    tree = write_phantom(
        tmp_path, patients=12, seed=11, size=(96, 80), frames=(2, 2), preview=False, test_patients=9
    )
    stated, from_truth, from_labels = [], [], []
    for folder in sorted((tree / "database_nifti").iterdir()):
        for view in ("2CH", "4CH"):
            _, cfg = read_cfg(folder / f"Info_{view}.cfg")
            ed, spacing = read(folder / f"{folder.name}_{view}_ED_gt.nii.gz")
            es, _ = read(folder / f"{folder.name}_{view}_ES_gt.nii.gz")
            stated.append(int(cfg["EF"]))
            from_labels.append(100 * (1 - area_length_volume(es, spacing) / area_length_volume(ed, spacing)))
            truth = [
                read_truth(tmp_path, f"phantom2023/{folder.name}_{view}_{phase}") for phase in ("ED", "ES")
            ]
            if truth[0] is None:
                continue
            assert (truth[1] == 1).sum() < (truth[0] == 1).sum()  # the cavity shrinks
            assert (truth[1] == 3).sum() > (truth[0] == 3).sum()  # the atrium fills
            ratio = area_length_volume(truth[1], spacing) / area_length_volume(truth[0], spacing)
            from_truth.append((100 * (1 - ratio), int(cfg["EF"])))
    measured, truth_stated = np.array(from_truth).T
    assert len(measured) == 18
    # The truth is drawn for the EF (regional hypokinesis included); the labels carry an observer's noise.
    assert np.abs(measured - truth_stated).max() < 6.0 and np.corrcoef(measured, truth_stated)[0, 1] > 0.95
    stated, from_labels = np.array(stated), np.array(from_labels)
    # Single-plane EF of an observer's contours at 96 x 80 px: clinical-sized disagreement, still related.
    assert np.abs(from_labels - stated).mean() < 8.0 and np.corrcoef(stated, from_labels)[0, 1] > 0.6


# ---------------------------------------------------------------------------------------------------------
# Attributes and image quality
# ---------------------------------------------------------------------------------------------------------


def test_patient_attributes_follow_plausible_distributions():
    patients = [sample_patient(0, n) for n in range(1, 2001)]
    sexes = np.array([p.sex for p in patients])
    ages = np.array([p.age for p in patients])
    efs = np.array([p.ef for p in patients])
    assert 0.45 < np.mean(sexes == "M") < 0.55
    # Image quality is graded per view with CAMUS's per-view frequencies; the views of a patient agree
    # more often than independent draws would (one acoustic window).
    for view, counts in CAMUS_QUALITY_COUNTS.items():
        qualities = np.array([p.quality(view) for p in patients])
        for quality, count in zip(("Good", "Medium", "Poor"), counts, strict=True):
            assert abs(np.mean(qualities == quality) - count / sum(counts)) < 0.03, (view, quality)
    agree = np.mean([p.qualities[0] == p.qualities[1] for p in patients])
    independent = sum(
        a * b / (sum(CAMUS_QUALITY_COUNTS["2CH"]) * sum(CAMUS_QUALITY_COUNTS["4CH"]))
        for a, b in zip(CAMUS_QUALITY_COUNTS["2CH"], CAMUS_QUALITY_COUNTS["4CH"], strict=True)
    )
    assert agree > independent + 0.1
    assert ages.min() >= 18 and ages.max() <= 88 and ages.std() > 8
    assert efs.min() >= 20 and efs.max() <= 75
    assert 0.4 < np.mean((efs >= 50) & (efs <= 65)) < 0.8 and np.mean(efs < 40) > 0.1
    assert sample_patient(0, 5) == sample_patient(0, 5) != sample_patient(1, 5)


def test_poor_images_have_lower_blood_myocardium_contrast(tmp_path: Path):
    from scipy.stats import mannwhitneyu

    tree = write_phantom(tmp_path, patients=36, seed=5, size=(64, 56), frames=(2, 2), preview=False)
    contrast = {"Good": [], "Medium": [], "Poor": []}
    for folder in sorted((tree / "database_nifti").iterdir()):
        for view in ("2CH", "4CH"):
            _, cfg = read_cfg(folder / f"Info_{view}.cfg")
            for instant in ("ED", "ES"):
                image, _ = read(folder / f"{folder.name}_{view}_{instant}.nii.gz")
                mask, _ = read(folder / f"{folder.name}_{view}_{instant}_gt.nii.gz")
                myocardium, blood = image[mask == 2].mean(), image[mask == 1].mean()
                contrast[cfg["ImageQuality"]].append((myocardium - blood) / (myocardium + blood))
    assert len(contrast["Poor"]) >= 8 and len(contrast["Good"]) >= 8
    assert np.mean(contrast["Poor"]) < np.mean(contrast["Medium"]) < np.mean(contrast["Good"])
    assert mannwhitneyu(contrast["Good"], contrast["Poor"], alternative="greater").pvalue < 0.01


def test_preview_png_is_a_grid(tree_2023: Path):
    from PIL import Image

    preview = Image.open(tree_2023.parent / "phantom_preview.png")
    assert preview.mode == "RGB"
    assert preview.width >= 8 * SIZE[1] and preview.height >= 4 * SIZE[0]
    pixels = np.asarray(preview)
    assert np.any((pixels[..., 0] > 200) & (pixels[..., 1] < 100))  # red LV contours are drawn


# ---------------------------------------------------------------------------------------------------------
# Label noise, truth, test split size
# ---------------------------------------------------------------------------------------------------------


def test_truth_files_hold_the_clean_masks_of_the_test_patients(tree_2023: Path, tree_2019: Path):
    out_2023, out_2019 = tree_2023.parent, tree_2019
    testing = phantom_splits(PATIENTS, 7)["testing"]
    expected = {
        f"{pid}_{view}_{phase}.png" for pid in testing for view in ("2CH", "4CH") for phase in ("ED", "ES")
    }
    assert {p.name for p in (out_2023 / "truth").iterdir()} == expected
    testing_2019 = sorted(k.split("/")[1] for k in phantom_id_map(PATIENTS, 7) if k.startswith("testing/"))
    assert {p.name for p in (out_2019 / "truth" / "testing").iterdir()} == {
        f"{pid}_{view}_{phase}.png"
        for pid in testing_2019
        for view in ("2CH", "4CH")
        for phase in ("ED", "ES")
    }
    id_map = {v: k for k, v in phantom_id_map(PATIENTS, 7).items()}
    scores = []
    for pid in testing:
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                record_id = f"phantom2023/{pid}_{view}_{phase}"
                truth = read_truth(out_2023, record_id)
                label, _ = read(tree_2023 / "database_nifti" / pid / f"{pid}_{view}_{phase}_gt.nii.gz")
                image, _ = read(tree_2023 / "database_nifti" / pid / f"{pid}_{view}_{phase}.nii.gz")
                assert truth.dtype == np.uint8 and truth.shape == SIZE
                assert set(np.unique(truth).tolist()) == {0, 1, 2, 3}
                assert not np.any((truth > 0) & (image == 0))  # clipped to the fan, as the labels are
                # The labels are an observer's contours of the truth: close, but not the same pixels.
                assert not np.array_equal(truth, label)
                scores.append(dice((label == 1) | (label == 2), (truth == 1) | (truth == 2)))
                # The 2019 layout writes the same truth under the testing folder's own ids.
                twin = f"phantom2019-testing/{id_map[pid].split('/')[1]}_{view}_{phase}"
                np.testing.assert_array_equal(read_truth(out_2019, twin), truth)
    assert 0.8 < np.mean(scores) < 0.99
    training = phantom_splits(PATIENTS, 7)["training"][0]
    assert read_truth(out_2023, f"phantom2023/{training}_2CH_ED") is None  # only test patients have truth
    assert (
        truth_path(out_2023, "camus2023/patient0001_4CH_ES") == out_2023 / "truth" / "patient0001_4CH_ES.png"
    )
    with pytest.raises(SynthechoError, match="not a CAMUS record id"):
        read_truth(out_2023, "phantom2023/patient1_2CH_ED")


def test_test_patients_sets_the_test_split_and_its_truth(tmp_path: Path):
    splits = phantom_splits(40, 0, test_patients=30)
    assert [len(splits[name]) for name in ("training", "validation", "testing")] == [4, 6, 30]
    assert phantom_splits(40, 0) == phantom_splits(40, 0, test_patients=None)  # default ~15 %
    with pytest.raises(SynthechoError, match="source.phantom.test_patients"):
        phantom_splits(40, 0, test_patients=34)
    # Writing again with another test split leaves no truth of former test patients behind.
    write_phantom(tmp_path, patients=6, seed=1, size=(48, 40), frames=(2, 2), preview=False, test_patients=1)
    write_phantom(tmp_path, patients=6, seed=1, size=(48, 40), frames=(2, 2), preview=False, test_patients=3)
    write_phantom(tmp_path, patients=6, seed=1, size=(48, 40), frames=(2, 2), preview=False, test_patients=2)
    names = {p.name.split("_")[0] for p in (tmp_path / "truth").iterdir()}
    assert names == set(phantom_splits(6, 1, test_patients=2)["testing"])


def test_the_anatomy_check_accepts_tilted_hearts_and_refuses_wrong_orientations(tmp_path: Path):
    from dataclasses import replace

    from synthecho.sources.camus import check_anatomy, read_camus

    tree = write_phantom(tmp_path, patients=16, seed=2, size=(96, 80), frames=(2, 2), preview=False)
    records = read_camus(tree, name="phantom")  # runs the check: every tilted, off-axis heart passes
    tilts = []
    for record in records:
        rows, cols = np.nonzero(record.mask == 1)
        points = np.stack([cols * record.spacing[1], rows * record.spacing[0]], axis=1)
        values, vectors = np.linalg.eigh(np.cov((points - points.mean(axis=0)).T))
        axis = vectors[:, int(np.argmax(np.abs(vectors[1])))]
        tilts.append(abs(np.degrees(np.arctan2(axis[0], axis[1] if axis[1] > 0 else -axis[1]))))
        for wrong in (
            record.mask[::-1],
            np.ascontiguousarray(record.mask.T),
            np.ascontiguousarray(record.mask[::-1].T),
        ):
            with pytest.raises(SynthechoError, match="transposed or flipped"):
                check_anatomy(replace(record, mask=np.ascontiguousarray(wrong)))
    assert max(tilts) > 18  # the cohort does hold strongly tilted hearts


def test_rerendered_record_shows_the_same_anatomy_with_fresh_speckle(tree_2023: Path):
    from synthecho.sources.phantom import rerender_record

    spec = {"patients": PATIENTS, "seed": 7, "size": SIZE}
    pid = phantom_splits(PATIENTS, 7)["training"][0]
    image, _ = read(tree_2023 / "database_nifti" / pid / f"{pid}_4CH_ES.nii.gz")
    again = rerender_record(f"phantom2023/{pid}_4CH_ES", spec, speckle_seed=0)
    np.testing.assert_array_equal(again > 0, image > 0)  # the same fan
    assert 0.3 < np.corrcoef(again.ravel(), image.ravel())[0, 1] < 0.95  # same anatomy, other speckle
    np.testing.assert_array_equal(rerender_record(f"phantom2023/{pid}_4CH_ES", spec, speckle_seed=0), again)
    assert not np.array_equal(rerender_record(f"phantom2023/{pid}_4CH_ES", spec, speckle_seed=1), again)


def test_prepare_writes_the_phantoms_test_truth_resized_as_the_labels(tmp_path: Path):
    from synthecho.layout import RunLayout
    from synthecho.real import load_real, resize_frame
    from synthecho.recipe import recipe_from_dict
    from synthecho.stages import run_stage

    def prepare(run_dir: Path, layout: str):
        phantom = {"patients": 8, "seed": 2, "size": [64, 56], "layout": layout, "test_patients": 3}
        recipe = recipe_from_dict(
            {"name": "x", "source": {"phantom": phantom}, "prepare": {"resolution": 32}}
        )
        run_stage("prepare", recipe, run_dir, progress=False)
        return load_real(run_dir, "test")

    test = prepare(tmp_path / "run", "2023")
    assert len({r["patient"] for r in test.records}) == 3 and test.truth.shape == test.masks.shape
    source = RunLayout.of(tmp_path / "run").source / "phantom-2023-n8-s2"
    for record, truth in zip(test.records, test.truth, strict=True):
        native = read_truth(source, record["id"])
        image, _ = read(Path(record["source_file"]))
        _, expected, _ = resize_frame(image, native, sector_from_image(image), 32)
        np.testing.assert_array_equal(truth, expected)
    assert not np.array_equal(test.truth, test.masks)
    # The 2019 layout's test split is carved from training patients, which have no truth: no file.
    assert prepare(tmp_path / "run2019", "2019").truth is None
    assert not RunLayout.of(tmp_path / "run2019").test_truth.exists()
    with pytest.raises(SynthechoError, match="test_patients"):
        recipe_from_dict({"name": "x", "source": {"phantom": {"test_patients": 0}}})
