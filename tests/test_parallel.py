"""synthecho.parallel: results in input order, the same as a plain map, whatever the number of workers."""

from __future__ import annotations

import math

import pytest

from synthecho.errors import SynthechoError
from synthecho.parallel import ordered_map, worker_count


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ordered_map_is_map(monkeypatch, workers):
    monkeypatch.setenv("SYNTHECHO_WORKERS", workers)
    values = [0.5 * i for i in range(9)]
    assert list(ordered_map(math.ldexp, values, range(9))) == list(map(math.ldexp, values, range(9)))
    assert list(ordered_map(math.sqrt, [])) == []


def test_worker_count_is_bounded_and_the_variable_checked(monkeypatch):
    monkeypatch.setenv("SYNTHECHO_WORKERS", "8")
    assert worker_count(3) == 3 and worker_count(0) == 1
    monkeypatch.setenv("SYNTHECHO_WORKERS", "two")
    with pytest.raises(SynthechoError, match="SYNTHECHO_WORKERS must be a whole number"):
        worker_count(4)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sections_recorded_in_workers_come_back_to_the_caller(monkeypatch, workers):
    """While profiling records, what each call records reaches the caller's report, once per call."""
    from synthecho import profiling

    monkeypatch.setenv("SYNTHECHO_WORKERS", workers)
    profiling.enable()
    profiling.reset()
    try:
        list(ordered_map(profiling.add, ["work/part"] * 5, [0.25] * 5))
        recorded = profiling.report()["work/part"]
    finally:
        profiling.disable()
        profiling.reset()
    assert recorded["seconds"] == pytest.approx(1.25) and recorded["count"] == 5
    assert recorded["worker_thread"] is (workers == "2")  # merged from other processes
