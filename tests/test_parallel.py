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
