"""CAMUS reader: both releases give the same records, and every bad input fails with a message naming the
file."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from camus_fixtures import (
    PATIENTS,
    REVERSED,
    SPLIT_MAP_2019,
    SPLITS_2023,
    cfg_text,
    frame_arrays,
    write_camus_2019,
    write_camus_2023,
    write_image,
)

from synthecho.errors import SynthechoError
from synthecho.sources.camus import (
    check_anatomy,
    detect_release,
    file_list_hash,
    parse_cfg,
    read_camus,
)

ALL_SPLITS = ("train", "validation", "test", "test_unlabelled")


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """Pristine trees, written once; tests that damage files work on a copy."""
    base = tmp_path_factory.mktemp("camus")
    return {"2023": write_camus_2023(base / "r2023"), "2019": write_camus_2019(base / "r2019")}


@pytest.fixture
def tree2023(trees, tmp_path) -> Path:
    return Path(shutil.copytree(trees["2023"], tmp_path / "r2023"))


@pytest.fixture
def tree2019(trees, tmp_path) -> Path:
    return Path(shutil.copytree(trees["2019"], tmp_path / "r2019"))


def nifti(root: Path, patient: str) -> Path:
    return root / "CAMUS_public" / "database_nifti" / patient


def raises(match_substrings, call, *args, **kwargs) -> str:
    """Call, expect SynthechoError, check every substring is in the message, return the message."""
    with pytest.raises(SynthechoError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    for substring in match_substrings:
        assert substring in message, f"{substring!r} not in {message!r}"
    return message


# --- both layouts, same data -----------------------------------------------------------------------------


def test_releases_detected(trees):
    assert detect_release(trees["2023"]) == "2023"
    assert detect_release(trees["2023"] / "CAMUS_public") == "2023"
    assert detect_release(trees["2023"] / "CAMUS_public" / "database_nifti") == "2023"
    assert detect_release(trees["2019"]) == "2019"


def test_2023_records_match_fixture_arrays_and_cfg(trees):
    records = read_camus(trees["2023"])
    assert len(records) == len(PATIENTS) * 4
    # sorted by split (train, validation, test), patient, view, phase
    order = ["train", "validation", "test"]
    keys = [(order.index(r.split), r.patient, r.view, r.phase) for r in records]
    assert keys == sorted(keys)
    for record in records:
        image, mask = frame_arrays(record.patient, record.view, record.phase)
        assert record.id == f"camus2023/{record.patient}_{record.view}_{record.phase}"
        assert record.split == SPLITS_2023[record.patient]
        assert record.image.dtype == np.uint8 and record.mask.dtype == np.uint8
        np.testing.assert_array_equal(record.image, image)
        np.testing.assert_array_equal(record.mask, mask)
        # SimpleITK spacing (lateral 0.3, depth 0.15) -> (row_mm, col_mm)
        assert record.spacing == (0.15, 0.3)
        assert record.release == "2023" and record.split_group == "database_nifti"
        assert record.frame_rate == 56.5
        nb = 7 if record.view == "2CH" else 9
        assert record.nb_frames == nb
        reversed_sequence = (record.patient, record.view) == REVERSED
        expected_index = {"ED": nb - 1, "ES": 0} if reversed_sequence else {"ED": 0, "ES": nb - 1}
        assert record.frame_index == expected_index[record.phase]
        assert Path(record.source_file).name == f"{record.patient}_{record.view}_{record.phase}.nii.gz"
    first = records[0]
    assert (first.sex, first.age, first.image_quality, first.ef) == ("M", 71, "Medium", 55.0)


def test_2019_gives_the_same_records_as_2023(trees):
    records_2023 = read_camus(trees["2023"], name="phantom")
    records_2019 = read_camus(trees["2019"], name="phantom", split_map=SPLIT_MAP_2019, splits=ALL_SPLITS)
    labelled = [r for r in records_2019 if r.split != "test_unlabelled"]
    assert len(labelled) == len(records_2023)
    for a, b in zip(records_2023, labelled, strict=True):
        assert a.id == f"phantom2023/{a.patient}_{a.view}_{a.phase}"
        assert b.id == a.id.replace("phantom2023/", "phantom2019-training/")
        for field in ("patient", "split", "view", "phase", "spacing", "sex", "age", "image_quality", "ef"):
            assert getattr(a, field) == getattr(b, field), field
        assert (a.frame_index, a.nb_frames) == (b.frame_index, b.nb_frames)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert b.source_file.endswith(".mhd") and b.frame_rate is None


def test_2019_testing_folder_is_unlabelled_and_opt_in(trees):
    default = read_camus(trees["2019"], validation_patients_2019=1)
    assert all(r.split_group == "training" for r in default)
    records = read_camus(trees["2019"], validation_patients_2019=1, splits=("test_unlabelled",))
    assert [r.id for r in records] == [
        f"camus2019-testing/patient0001_{v}_{p}" for v in ("2CH", "4CH") for p in ("ED", "ES")
    ]
    assert all(r.mask is None and r.ef is None and r.split == "test_unlabelled" for r in records)
    assert records[0].patient == "patient0001"  # same folder name as training/patient0001, other id


def test_2019_carving_count_and_fraction(trees):
    def splits_of(**kwargs) -> dict[str, str]:
        return {r.patient: r.split for r in read_camus(trees["2019"], **kwargs)}

    carved = {"patient0001": "validation", "patient0002": "test", "patient0003": "train"}
    assert splits_of(validation_patients_2019=1) == carved
    assert splits_of(validation_patients_2019=1.0) == carved  # a pydantic float field hands over 1.0
    assert splits_of(validation_patients_2019=0.2) == carved  # round(0.6) = 1
    assert splits_of(validation_patients_2019=1, splits=("test",)) == {"patient0002": "test"}
    raises(["validation_patients_2019", "3 patients"], read_camus, trees["2019"])  # default 50 > 3
    raises(["validation_patients_2019"], read_camus, trees["2019"], validation_patients_2019=0)
    raises(["validation_patients_2019"], read_camus, trees["2019"], validation_patients_2019=1.5)


def test_split_map_errors(trees):
    raises(["patient0003"], read_camus, trees["2019"], split_map={"training/patient0001": "train"})
    bad_key = dict(SPLIT_MAP_2019, **{"training/patient0099": "train"})
    raises(["patient0099"], read_camus, trees["2019"], split_map=bad_key)
    bad_value = dict(SPLIT_MAP_2019, **{"training/patient0001": "holdout"})
    raises(["holdout"], read_camus, trees["2019"], split_map=bad_value)
    raises(["split_map", "2019"], read_camus, trees["2023"], split_map=SPLIT_MAP_2019)


def test_file_list_hash(tree2023, trees):
    reference = file_list_hash(trees["2023"])
    assert file_list_hash(tree2023) == reference  # relative paths: same tree elsewhere, same hash
    assert file_list_hash(tree2023 / "CAMUS_public") == reference
    # the half sequence is not read, so it is not part of the hash
    (nifti(tree2023, "patient0001") / "patient0001_2CH_half_sequence.nii.gz").unlink()
    assert file_list_hash(tree2023) == reference
    cfg = nifti(tree2023, "patient0001") / "Info_2CH.cfg"
    cfg.write_text(cfg.read_text() + "Extra: 1\n")
    assert file_list_hash(tree2023) != reference
    assert file_list_hash(trees["2019"]) != reference


def test_parse_cfg_types(tmp_path):
    path = tmp_path / "Info_2CH.cfg"
    path.write_text(
        "ED: 1\nES: 16\nNbFrame: 16\nSex: M\nAge: 71\nImageQuality: Medium\nEF: 17\nFrameRate: 56.5\n"
    )
    cfg = parse_cfg(path, "2023")
    assert cfg == {
        "ED": 1,
        "ES": 16,
        "NbFrame": 16,
        "Sex": "M",
        "Age": 71,
        "ImageQuality": "Medium",
        "EF": 17.0,
        "FrameRate": 56.5,
    }
    assert isinstance(cfg["Age"], int) and isinstance(cfg["EF"], float)
    path.write_text(cfg_text("patient0001", "2CH", "2019", testing=True))
    assert parse_cfg(path, "2019", testing=True)["LVef"] is None
    raises(["LVedv", str(path)], parse_cfg, path, "2019")  # training cfg needs the LV keys


# --- anatomy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transform, what",
    [
        (lambda a: np.ascontiguousarray(a.T), "transposed"),
        (lambda a: np.ascontiguousarray(a[::-1]), "flipped"),
    ],
)
def test_transposed_or_flipped_dataset_fails_anatomy_check(tmp_path, transform, what):
    root = write_camus_2023(tmp_path, transform=transform)
    message = raises(["transposed or flipped", "patient0001_2CH_ED.nii.gz"], read_camus, root)
    assert "nibabel" in message
    assert len(read_camus(root, check_anatomy=False)) == 12  # opt-out reads it as stored


def test_check_anatomy_on_records(trees):
    record = read_camus(trees["2023"], splits=("train",))[0]
    check_anatomy(record)  # the fixture is upright
    check_anatomy(replace(record, mask=None))  # nothing to check
    upside_down = replace(record, mask=record.mask[::-1].copy())
    raises([record.source_file, "flipped"], check_anatomy, upside_down)
    raises([record.source_file, "no LV"], check_anatomy, replace(record, mask=np.zeros_like(record.mask)))


# --- errors, each naming the file ------------------------------------------------------------------------


def test_missing_root(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    raises([str(missing), "source.root", "SYNTHECHO_CAMUS_ROOT"], read_camus, missing)
    monkeypatch.delenv("SYNTHECHO_CAMUS_ROOT", raising=False)
    raises(["source.root", "SYNTHECHO_CAMUS_ROOT"], read_camus, None)


def test_root_env_var_is_used(trees, monkeypatch):
    monkeypatch.setenv("SYNTHECHO_CAMUS_ROOT", str(trees["2023"]))
    assert len(read_camus(None)) == 12


def test_root_that_is_neither_layout(tmp_path):
    (tmp_path / "something").mkdir()
    raises([str(tmp_path), "database_nifti", "training"], detect_release, tmp_path)
    raises([str(tmp_path), "database_nifti", "training"], read_camus, tmp_path)


def test_release_mismatch_and_unknown_split(trees):
    raises(["2019", "2023"], read_camus, trees["2023"], release="2019")
    raises(["holdout"], read_camus, trees["2023"], splits=("train", "holdout"))
    raises(["2021"], read_camus, trees["2023"], release="2021")


def test_root_with_both_layouts(trees, tmp_path):
    both = Path(shutil.copytree(trees["2023"], tmp_path / "both"))
    shutil.copytree(trees["2019"] / "training", both / "training")
    raises(["both", "source.release"], read_camus, both)
    assert read_camus(both, release="2023")[0].id.startswith("camus2023/")
    assert read_camus(both, release="2019", validation_patients_2019=1)[0].id.startswith(
        "camus2019-training/"
    )


@pytest.mark.parametrize(
    "filename",
    ["patient0002_2CH_ES_gt.nii.gz", "patient0002_4CH_ED.nii.gz", "Info_4CH.cfg"],
)
def test_missing_patient_file(tree2023, filename):
    (nifti(tree2023, "patient0002") / filename).unlink()
    raises([filename, "missing"], read_camus, tree2023)


def test_missing_2019_raw_file(tree2019):
    (tree2019 / "training" / "patient0003" / "patient0003_4CH_ES_gt.raw").unlink()
    raises(["patient0003_4CH_ES_gt.raw", "missing"], read_camus, tree2019, validation_patients_2019=1)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":
        path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    elif how == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 50)


@pytest.mark.parametrize("how", ["empty", "truncated", "corrupt", "garbage"])
def test_broken_nifti(tree2023, how):
    path = nifti(tree2023, "patient0001") / "patient0001_4CH_ES_gt.nii.gz"
    _damage(path, how)
    message = raises([str(path)], read_camus, tree2023)
    assert ("empty" in message) if how == "empty" else ("cannot be read" in message)


def test_truncated_2019_raw(tree2019):
    raw = tree2019 / "training" / "patient0002" / "patient0002_2CH_ED.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    raises(["patient0002_2CH_ED", "cannot be read"], read_camus, tree2019, validation_patients_2019=1)


def test_mask_values_outside_labels(tree2023):
    _, mask = frame_arrays("patient0003", "2CH", "ED")
    mask = mask.copy()
    mask[0, 0], mask[0, 1] = 4, 7
    path = nifti(tree2023, "patient0003") / "patient0003_2CH_ED_gt.nii.gz"
    write_image(path, mask)
    raises([str(path), "[4, 7]", "outside 0..3"], read_camus, tree2023)


def test_interpolated_float_mask(tree2023):
    _, mask = frame_arrays("patient0003", "2CH", "ED")
    path = nifti(tree2023, "patient0003") / "patient0003_2CH_ED_gt.nii.gz"
    write_image(path, mask.astype(np.float32) * 0.9)
    raises([str(path), "non-integer"], read_camus, tree2023)


def test_image_mask_shape_mismatch(tree2023):
    image, _ = frame_arrays("patient0001", "4CH", "ED")
    path = nifti(tree2023, "patient0001") / "patient0001_4CH_ED.nii.gz"
    write_image(path, image[:36])
    raises(["patient0001_4CH_ED_gt.nii.gz", str(path), "(40, 32)", "(36, 32)"], read_camus, tree2023)


def test_image_casting(tree2023):
    image, _ = frame_arrays("patient0001", "2CH", "ED")
    path = nifti(tree2023, "patient0001") / "patient0001_2CH_ED.nii.gz"
    # floats are rounded
    write_image(path, image.astype(np.float32) + 0.2)
    record = read_camus(tree2023, splits=("train",))[0]
    np.testing.assert_array_equal(record.image, image)
    # negative values, values above 255 and NaN are refused
    negative = image.astype(np.int16)
    negative[5, 5] = -3
    write_image(path, negative)
    raises([str(path), "negative"], read_camus, tree2023)
    large = image.astype(np.int16)
    large[5, 5] = 300
    write_image(path, large)
    raises([str(path), "0..255"], read_camus, tree2023)


def test_nan_image_refused(tree2019):
    # MetaImage keeps NaN (ITK's NIfTI reader turns NaN into 0, so the 2019 layout is where it shows)
    image, _ = frame_arrays("patient0003", "2CH", "ES")
    not_a_number = image.astype(np.float32)
    not_a_number[5, 5] = np.nan
    path = tree2019 / "training" / "patient0003" / "patient0003_2CH_ES.mhd"
    write_image(path, not_a_number)
    raises([str(path), "NaN"], read_camus, tree2019, validation_patients_2019=1)


def test_sequence_instead_of_frame(tree2023):
    image, _ = frame_arrays("patient0001", "2CH", "ED")
    path = nifti(tree2023, "patient0001") / "patient0001_2CH_ED.nii.gz"
    write_image(path, np.stack([image, image]))
    raises([str(path), "2-D frame"], read_camus, tree2023)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t: t.replace("Sex: M\n", ""), "no `Sex` key"),
        (lambda t: t.replace("Age: 71", "Age: old"), "`Age: old`"),
        (lambda t: t.replace("Sex: M", "Sex: X"), "M or F"),
        (lambda t: t.replace("ImageQuality: Medium", "ImageQuality: Great"), "Good, Medium or Poor"),
        (lambda t: t.replace("EF: 55", "EF: n/a"), "`EF: n/a`"),
        (lambda t: t.replace("ES: 7", "ES: 8"), "outside 1..NbFrame=7"),
        (lambda t: t.replace("ED: 1", "ED: 0"), "outside 1..NbFrame=7"),
        (lambda t: t + "garbage line\n", "not `Key: value`"),
        (lambda t: t + "Age: 12\n", "appears twice"),
    ],
)
def test_malformed_cfg(tree2023, edit, expected):
    path = nifti(tree2023, "patient0001") / "Info_2CH.cfg"
    path.write_text(edit(path.read_text()))
    raises([str(path), expected], read_camus, tree2023)


def test_cfg_tolerates_crlf_and_case(tmp_path):
    path = tmp_path / "Info_4CH.cfg"
    text = cfg_text("patient0002", "4CH", "2023").replace("Good", "good").replace("\n", "\r\n")
    path.write_text(text, newline="")
    cfg = parse_cfg(path, "2023")
    assert cfg["ImageQuality"] == "Good" and (cfg["ED"], cfg["ES"]) == (9, 1)  # the reversed sequence


def _split_file(root: Path, stem: str) -> Path:
    return root / "CAMUS_public" / "database_split" / f"subgroup_{stem}.txt"


def test_missing_split_file(tree2023):
    path = _split_file(tree2023, "validation")
    path.unlink()
    raises([str(path), "missing"], read_camus, tree2023)


def test_empty_split_file(tree2023):
    path = _split_file(tree2023, "testing")
    path.write_text("\n")
    raises([str(path), "empty"], read_camus, tree2023)


def test_overlapping_split_files(tree2023):
    path = _split_file(tree2023, "testing")
    path.write_text("patient0003\npatient0001\n")
    raises([str(path), "patient0001", "subgroup_training.txt"], read_camus, tree2023)


def test_split_id_without_folder(tree2023):
    path = _split_file(tree2023, "training")
    path.write_text("patient0001\npatient0450\n")
    raises([str(path), "patient0450", "does not exist"], read_camus, tree2023)


def test_split_files_are_read_not_ranges(tree2023):
    # swap train and test: the reader must follow the files
    train, test = _split_file(tree2023, "training"), _split_file(tree2023, "testing")
    train_text, test_text = train.read_text(), test.read_text()
    train.write_text(test_text)
    test.write_text(train_text)
    splits = {r.patient: r.split for r in read_camus(tree2023)}
    assert splits == {"patient0001": "test", "patient0002": "validation", "patient0003": "train"}


# --- the built-in phantom, read in both layouts ----------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_trees(tmp_path_factory):
    from synthecho.sources.phantom import phantom_id_map, write_phantom

    base = tmp_path_factory.mktemp("phantom")
    roots = {
        layout: write_phantom(base / layout, patients=8, seed=0, layout=layout, preview=False)
        for layout in ("2023", "2019")
    }
    return roots, phantom_id_map(8, 0)


def test_phantom_reads_the_same_in_both_layouts(phantom_trees):
    roots, id_map = phantom_trees  # id_map: "training/patient0003" -> 2023 id of the same patient
    records_2023 = read_camus(roots["2023"], name="phantom")
    by_key = {(r.patient, r.view, r.phase): r for r in records_2023}
    split_2023 = {r.patient: r.split for r in records_2023}
    split_map = {key: split_2023[pid] for key, pid in id_map.items() if key.startswith("training/")}
    records_2019 = read_camus(roots["2019"], name="phantom", split_map=split_map, splits=ALL_SPLITS)

    assert len(records_2019) == len(records_2023) == 8 * 4
    assert all(r.id.startswith("phantom2023/") for r in records_2023)
    # the phantom's 2019 training/ holds the 2023 train + validation patients, testing/ its test patients
    labelled_2023 = sorted(r.id.split("/")[1] for r in records_2023 if r.split != "test")
    for record in records_2019:
        twin = by_key[(id_map[f"{record.split_group}/{record.patient}"], record.view, record.phase)]
        assert record.id == f"phantom2019-{record.split_group}/{record.patient}_{record.view}_{record.phase}"
        np.testing.assert_array_equal(record.image, twin.image)
        for field in ("spacing", "sex", "age", "image_quality", "ef", "frame_index", "nb_frames"):
            assert getattr(record, field) == getattr(twin, field), (record.id, field)
        if record.split_group == "training":
            assert record.split == twin.split != "test"
            np.testing.assert_array_equal(record.mask, twin.mask)
        else:
            assert record.split == "test_unlabelled" and twin.split == "test" and record.mask is None
    labelled_2019 = sorted(
        f"{id_map['training/' + r.patient]}_{r.view}_{r.phase}" for r in records_2019 if r.mask is not None
    )
    assert labelled_2019 == labelled_2023


def test_phantom_2019_carving_with_a_fraction(phantom_trees):
    roots, _ = phantom_trees
    records = read_camus(roots["2019"], validation_patients_2019=0.15)  # 7 training patients -> 1 + 1 + 5
    patients = {split: sorted({r.patient for r in records if r.split == split}) for split in ALL_SPLITS}
    assert patients["validation"] == ["patient0001"] and patients["test"] == ["patient0002"]
    assert len(patients["train"]) == 5 and patients["test_unlabelled"] == []
    assert file_list_hash(roots["2019"]) != file_list_hash(roots["2023"])
