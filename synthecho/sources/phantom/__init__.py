"""Built-in CAMUS-format phantom: simulated apical 2CH/4CH echo with expert-like labels, as a CAMUS tree.

The phantom lets the whole toolkit (readers, prepare, training, filters, tests, CI, the demo) run with no
CAMUS download. It writes the same files, names, cfg keys, label values and split files as the real
releases, so the real CAMUS reader is the one that loads it; unlike CAMUS it also knows the truth.

Modules:
  * `cohort`: patients (sex, age, EF, image quality per view with CAMUS's per-view frequencies), splits,
    2019 <-> 2023 id map.
  * `anatomy`, `geometry`: LV outline families, tilt, off-axis and foreshortened apices, hearts cut by
    the sector, ED -> ES motion solved for the EF, regional hypokinesis; tissue classes and labels.
  * `echo`: image formation (speckle carried by the tissue, PSF and side lobes, attenuation, haze,
    apical clutter, dropout, rib and lung shadows, log compression, scan conversion).
  * `observer`: the `_gt` masks as one expert's contours of the truth, sized from the CAMUS paper's
    inter-observer Dice.
  * `writer`, `preview`: both on-disk layouts, the test patients' truth, `phantom_preview.png`.

How the phantom compares with CAMUS, measured by `benchmarks/phantom_stats.py` and held in bands by
tests/test_phantom_statistics.py: docs/phantom.md.

Determinism: every random draw comes from a numpy Generator seeded from (seed, patient[, view, stream]),
and the writers embed no timestamps (SimpleITK writes gzip headers with mtime 0), so the same seed gives
byte-identical files.
"""

from synthecho.sources.phantom.cohort import (
    CAMUS_QUALITY_COUNTS,
    QUALITIES,
    VIEWS,
    PatientAttributes,
    patient_id,
    phantom_id_map,
    phantom_splits,
    sample_patient,
)
from synthecho.sources.phantom.writer import (
    TRUTH_DIR,
    ViewRecord,
    parse_record_id,
    read_truth,
    render_patient,
    rerender_record,
    single_plane_volume,
    truth_path,
    write_phantom,
)

# Bumped whenever the simulator's output changes for the same arguments: a run's phantom tree is reused
# only when it was written by the same version (the prepare stage's source marker holds it).
SIMULATOR_VERSION = 2

__all__ = [
    "SIMULATOR_VERSION",
    "CAMUS_QUALITY_COUNTS",
    "QUALITIES",
    "TRUTH_DIR",
    "VIEWS",
    "PatientAttributes",
    "ViewRecord",
    "patient_id",
    "phantom_id_map",
    "phantom_splits",
    "parse_record_id",
    "read_truth",
    "render_patient",
    "rerender_record",
    "sample_patient",
    "single_plane_volume",
    "truth_path",
    "write_phantom",
]
