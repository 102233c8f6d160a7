"""Where the time goes inside the pipeline's loops: a process-wide accumulator of named sections.

    from synthecho import profiling

    with profiling.section("generator/forward"):
        loss = loss_fn(model, batch)

Off by default: then `section` hands back one shared do-nothing context manager and `add` returns at
once, so the loops pay a function call and a flag test per section. `benchmarks/cpu.py` calls `enable()`
and reads `report()` after each stage: {name: {"seconds": wall seconds summed, "count": entries,
"worker_thread": whether any of it ran off the main thread}}.

Section names are `<loop>/<part>`, the loop being the one that runs the code (generator, segmenter,
downstream, attributes, generate, shards, evaluate) and the part one of data, forward, backward (with
the optimizer step), validation, checkpoint, ... Sections are flat: a section inside another one is
counted in both. Times are wall-clock (`time.perf_counter`) per thread and summed: a section run on a
worker thread (the shard writer's PNG encoding) overlaps the main thread's and may add up to more than
the stage took; so may sections run in worker processes (`parallel.ordered_map` hands their `report()`
to `merge`). Nothing is synchronised: on a GPU, kernels still running when a
section ends are counted in whichever later section waits for them (the benchmark is a CPU benchmark).

This module imports nothing but the standard library, so every layer may use it.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

_enabled = False
_totals: dict[str, list] = {}  # name -> [seconds, count, ran off the main thread]
_lock = threading.Lock()  # the shard writer thread adds while the main thread does
_DISABLED = nullcontext()  # reusable: entering it does nothing


def enable() -> None:
    global _enabled
    _enabled = True


def disable() -> None:
    global _enabled
    _enabled = False


def is_enabled() -> bool:
    return _enabled


def reset() -> None:
    """Forget every section recorded so far (whether or not recording is enabled)."""
    with _lock:
        _totals.clear()


def _accumulate(name: str, seconds: float, count: int, off_main_thread: bool) -> None:
    entry = _totals.setdefault(name, [0.0, 0, False])
    entry[0] += seconds
    entry[1] += count
    entry[2] = entry[2] or off_main_thread


def add(name: str, seconds: float, count: int = 1) -> None:
    """Add `seconds` (and `count` entries) to section `name`; nothing when disabled."""
    if not _enabled:
        return
    worker = threading.current_thread() is not threading.main_thread()
    with _lock:
        _accumulate(name, seconds, count, worker)


class _Section:
    __slots__ = ("name", "started")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> _Section:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        add(self.name, time.perf_counter() - self.started)  # an exception still counts its time


def section(name: str):
    """Context manager timing its block into section `name` when enabled."""
    return _Section(name) if _enabled else _DISABLED


def merge(recorded: dict[str, dict]) -> None:
    """Add a `report()` made elsewhere (a worker process) to this process's sections; nothing when
    disabled. Its sections count as run off the main thread, since they overlapped it."""
    if not _enabled:
        return
    with _lock:
        for name, figures in recorded.items():
            _accumulate(name, figures["seconds"], figures["count"], True)


def report() -> dict[str, dict[str, float | int | bool]]:
    """{name: {"seconds", "count", "worker_thread"}} of what was recorded since the last `reset`, by name."""
    with _lock:
        return {
            name: {"seconds": seconds, "count": count, "worker_thread": worker}
            for name, (seconds, count, worker) in sorted(_totals.items())
        }
