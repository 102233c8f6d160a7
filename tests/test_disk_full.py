"""A full disk during a stage: one `error:` line naming the folder and the need, exit 2; finished shards
stay, no partial shard counts as done, and the rerun after freeing space produces every planned row once.

Two ways: a real, tiny tmpfs that fills up during `generate` (needs root, as CI here has; skipped
otherwise), and ENOSPC raised by the shard writer itself (runs everywhere).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from test_generate import SeededSampler, all_ids, planned_ids, tiny_recipe, write_real

from synthecho.diskspace import DiskFullError, estimate_bytes, human, is_disk_full
from synthecho.shards import marker_path, verify_shard
from synthecho.stages import is_current, run_stage


def finished_shards(run_dir: Path) -> list[str]:
    raw = run_dir / "shards" / "raw"
    return sorted(p.name for p in raw.glob("*.parquet") if marker_path(p).is_file())


def assert_nothing_partial_counts(run_dir: Path) -> None:
    raw = run_dir / "shards" / "raw"
    assert list(raw.glob(".*.tmp")) == []  # the writer's temporary files are gone
    for name in finished_shards(run_dir):
        assert verify_shard(raw / name)  # every shard with a marker is whole
    assert not is_current(tiny_recipe(), run_dir, "generate")  # the stage is not marked done


@pytest.fixture()
def small_fs(tmp_path):
    """A 4 MB tmpfs, unmounted afterwards (skips where mounting is not allowed)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_filesystem_that_fills_during_generate(small_fs, tmp_path):
    recipe = tiny_recipe()
    # Size one shard on a normal disk first, then leave room for about one and a half on the tmpfs.
    reference = tmp_path / "reference"
    write_real(reference, {"train": 3, "validation": 1})
    run_stage("generate", recipe, reference, sampler=SeededSampler(), progress=False)
    shard_bytes = max(p.stat().st_size for p in (reference / "shards" / "raw").glob("*.parquet"))

    run_dir = small_fs / "run"
    write_real(run_dir, {"train": 3, "validation": 1})
    filler = small_fs / "filler"
    free = shutil.disk_usage(small_fs).free
    filler.write_bytes(b"\0" * max(free - int(1.5 * shard_bytes) - 8192, 0))
    with pytest.raises(DiskFullError) as caught:
        run_stage("generate", recipe, run_dir, sampler=SeededSampler(), progress=False)
    message = str(caught.value)
    assert "\n" not in message and f"the file system of {run_dir}" in message and "during generate" in message
    assert "it needs roughly" in message and "then rerun" in message
    assert_nothing_partial_counts(run_dir)
    done_before = finished_shards(run_dir)

    filler.unlink()
    info = run_stage("generate", recipe, run_dir, sampler=SeededSampler(), progress=False)
    assert info["complete"] and info["shards_already_done"] == len(done_before)
    assert Counter(all_ids(run_dir)) == Counter(planned_ids(recipe, run_dir))  # every row exactly once


def test_enospc_in_the_shard_writer(tmp_path, monkeypatch):
    from synthecho import shards

    recipe = tiny_recipe()
    run_dir = tmp_path / "run"
    write_real(run_dir, {"train": 3, "validation": 1})
    real_finish = shards.ShardFile.finish
    finished = []

    def finish_then_fill(self, extra=None):
        if len(finished) == 2:  # the disk fills while the third shard is closed
            raise OSError(errno.ENOSPC, "No space left on device")
        finished.append(self.path.name)
        return real_finish(self, extra)

    monkeypatch.setattr(shards.ShardFile, "finish", finish_then_fill)
    with pytest.raises(DiskFullError, match=r"no space left on the file system of .* during generate"):
        run_stage("generate", recipe, run_dir, sampler=SeededSampler(), progress=False)
    assert finished_shards(run_dir) == sorted(finished)
    assert_nothing_partial_counts(run_dir)
    monkeypatch.setattr(shards.ShardFile, "finish", real_finish)
    info = run_stage("generate", recipe, run_dir, sampler=SeededSampler(), progress=False)
    assert info["complete"] and info["shards_already_done"] == 2
    assert Counter(all_ids(run_dir)) == Counter(planned_ids(recipe, run_dir))


def test_the_cli_prints_one_error_line(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from synthecho.cli import app
    from synthecho.stages import generate

    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe().model_dump(mode="json")), encoding="utf-8")
    run_dir = tmp_path / "run"
    write_real(run_dir, {"train": 3, "validation": 1})

    def full(*args, **kwargs):  # what pyarrow raises when a write hits a full disk
        raise OSError(
            errno.ENOSPC, "[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left"
        )

    monkeypatch.setattr(generate, "run", full)
    result = CliRunner().invoke(app, ["generate", "--recipe", str(recipe_file), "--run-dir", str(run_dir)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith(f"error: no space left on the file system of {run_dir} during generate (")
    # (3 + 1) patients x 4 records x 2 variants = 32 rows of 16 x 16 px in 3 + 1 shards: nothing measured
    # yet, so pixels x 1.1 + 2 kB per row + 30 kB per shard.
    assert f"it needs roughly {human(32 * (16 * 16 * 1.1 + 2000) + 4 * 30_000)} for generate" in line


def test_only_a_full_disk_is_turned_into_a_user_error():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError("[Errno 28] Error writing bytes to file. Detail: No space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))  # a bug or a setup error: traceback
    assert not is_disk_full(ValueError("No space left on device"))
    assert estimate_bytes("train", tiny_recipe(), Path("/nonexistent")) is None
