"""Where things live: the run directory (`RunLayout`) and the published Hub repository (`hub`).

Every path a stage reads or writes is named here once, so the README's "What a run produces" table, the
stages and the tests cannot drift apart:

    <run>/real/{train,validation,test}.parquet   prepared real frames, masks, sectors, attributes, prompts
    <run>/real/test_truth.parquet                 the phantom's clean test masks (label noise-free truth)
    <run>/real/copy_null.parquet                  legitimate same-anatomy frame pairs (the copy check's null)
    <run>/source/                                 the phantom tree (CAMUS layout), when the source is
                                                  simulated
    <run>/generator/, <run>/segmenter/            trained weights (+ `.complete.json` markers)
    <run>/shards/raw/, <run>/shards/scored/       generated rows; the same rows with quality scores
    <run>/data/{split}-*-of-*.parquet             the publishable corpus (rows that passed)
    <run>/manifest.json, <run>/README.md          provenance; the dataset card
    <run>/reports/                                grids, curves, quality.md, downstream tables
    <run>/downstream/                             the downstream study's results and cached units
    <run>/caps/cap-<p>/                           sub-runs with capped real data (the study's real-data caps)
    <run>/stages/<stage>.json                     stage completion markers
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory."""

    root: Path

    @classmethod
    def of(cls, run_dir: str | os.PathLike | RunLayout) -> RunLayout:
        return run_dir if isinstance(run_dir, RunLayout) else cls(Path(run_dir))

    # --- provenance and results ---
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def stage_marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    # --- prepare ---
    @property
    def real(self) -> Path:
        return self.root / "real"

    def real_split(self, split: str) -> Path:
        return self.real / f"{split}.parquet"

    @property
    def test_truth(self) -> Path:
        """The phantom's clean masks of the test frames, resized as the labels are (phantom sources only)."""
        return self.real / "test_truth.parquet"

    @property
    def copy_null(self) -> Path:
        """Frames that show a train/validation record's anatomy without being it (`prepare`)."""
        return self.real / "copy_null.parquet"

    @property
    def source(self) -> Path:
        return self.root / "source"

    # --- train ---
    @property
    def generator(self) -> Path:
        return self.root / "generator"

    @property
    def segmenter(self) -> Path:
        return self.root / "segmenter"

    def model_marker(self, part: str) -> Path:
        """Completion marker of a trained model folder ("generator" or "segmenter")."""
        return self.root / part / ".complete.json"

    def model_checkpoints(self, part: str) -> Path:
        """Training checkpoints of a model folder ("generator" or "segmenter"); a rerun resumes from them."""
        return self.root / part / "checkpoints"

    @property
    def generator_grid(self) -> Path:
        """The generator's sample grid as `train` copies it into the reports (the card shows it)."""
        return self.reports / "generator_sample_grid.png"

    # --- generate / filter ---
    @property
    def raw_shards(self) -> Path:
        return self.root / "shards" / "raw"

    def raw_shard(self, name: str) -> Path:
        return self.raw_shards / f"{name}.parquet"

    @property
    def scored_shards(self) -> Path:
        return self.root / "shards" / "scored"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def data_shard(self, split: str, number: int, count: int) -> Path:
        return self.data / hub.data_shard_name(split, number, count)

    def data_files(self, split: str) -> list[Path]:
        """The publishable shards of one split, in shard order."""
        return sorted(self.data.glob(f"{split}-*-of-*.parquet"))

    # --- evaluate ---
    @property
    def downstream(self) -> Path:
        return self.root / "downstream"

    @property
    def downstream_units(self) -> Path:
        return self.downstream / "units"

    def cap_run(self, label: str) -> Path:
        return self.root / "caps" / label


def cap_label(cap: float) -> str:
    """Folder / key name of a real-data cap (`RunLayout.cap_run`, the study's `caps` keys): cap-0.25."""
    return f"cap-{cap:g}"


class hub:  # noqa: N801 - a namespace of constants, read as `hub.DATA_PATTERN`
    """The published dataset repository, identical in a local folder (`publish --to`) and on the Hub."""

    CARD = "README.md"
    MANIFEST = "manifest.json"
    SAMPLE_GRID = "sample_grid.png"  # beside the card, in cards/<name>/ too
    DATA_DIR = "data"
    DATA_PATTERN = "data/{split}-*"  # the card's `configs:` data_files
    PROMPTS_FILE = "prompts/prompts-00000-of-00001.parquet"
    PROMPTS_PATTERN = "prompts/prompts-*"
    DATA_SHARD_ROWS = 1000  # rows per published shard (~20-40 MB at 256 px): few files, cheap downloads
    ROW_GROUP_SIZE = 100  # rows per Parquet row group: the Hub viewer's page size, cheap random access
    PROMPT_ROW_GROUP = 4800  # 100 corpus rows x 48 prompts: the same rows per group as the data shards
    # Every planned row's conditioning (rejected rows too): what `synthecho regenerate` samples from.
    REGENERATION_FILE = "regeneration/plan-00000-of-00001.parquet"
    GENERATOR_SUFFIX = "-generator"  # the model repo beside the dataset: ORG/NAME-generator, DIR-generator

    @staticmethod
    def data_shard_name(split: str, number: int, count: int) -> str:
        return f"{split}-{number:05d}-of-{count:05d}.parquet"
