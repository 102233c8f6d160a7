"""Run a pure function over many inputs on every CPU core, results in input order.

The phantom's rendering (patients in `prepare`, re-renderings for the copy null) is single-threaded numpy
and scipy, so on a 2-core machine half the CPU sat idle. Each call is seeded by its own arguments, so the
results are byte-identical whether they come from one process or several.

Worker processes are started with "spawn": the parent may already hold torch's thread pools, which a
forked child would inherit in an undefined state. `SYNTHECHO_WORKERS=1` runs everything in this process
(as a debugger wants it); the default is one worker per CPU this process may use. As with any spawned
worker, a script that calls this (e.g. through `write_phantom`) keeps its top-level code under
`if __name__ == "__main__":`, since each worker imports the script again.

While `profiling` records (`benchmarks/cpu.py`), each worker call records its own sections and hands them
back with its result; they are merged into this process's, so work moved into workers stays visible.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from synthecho import profiling
from synthecho.errors import SynthechoError

WORKERS_VARIABLE = "SYNTHECHO_WORKERS"


def worker_count(tasks: int) -> int:
    """Processes to use for `tasks` calls: $SYNTHECHO_WORKERS, else the usable CPUs; never more than tasks."""
    value = os.environ.get(WORKERS_VARIABLE, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise SynthechoError(f"${WORKERS_VARIABLE} must be a whole number >= 1, got {value!r}")
        wanted = int(value)
    else:
        wanted = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(wanted, tasks))


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block, the caller's setting restored after.

    For the small networks run through `ordered_map` (attribute classifiers, realism probes, downstream
    units): thread synchronisation costs them more than a second thread saves (a downstream U-Net step
    42.6 ms on two threads, 49.3 ms on one, AMD EPYC AVX2), so two one-thread workers do ~1.7x the work of
    one two-thread process; and the result is the same whether the call runs in a worker or here.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _profiled_call(function: Callable[..., Any], *arguments: Any) -> tuple[Any, dict]:
    """`function(*arguments)` in a worker, with the `profiling` sections of this call alone (a worker
    serves several calls)."""
    profiling.enable()
    profiling.reset()
    return function(*arguments), profiling.report()


def ordered_map(function: Callable[..., Any], *arguments: Iterable[Any]) -> Iterator[Any]:
    """`map(function, *arguments)` spread over worker processes; yields results in input order.

    `function` must be importable by name (a module-level function) and its arguments picklable.
    """
    columns = [list(column) for column in arguments]
    tasks = len(columns[0]) if columns else 0
    workers = worker_count(tasks)
    if workers == 1:
        yield from map(function, *columns)
        return
    profiled = profiling.is_enabled()

    def result(future) -> Any:
        if not profiled:
            return future.result()
        value, sections = future.result()
        profiling.merge(sections)
        return value

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        # A few calls in flight per worker, not all at once: results wait in memory only until the
        # caller takes them, so memory stays flat whatever the number of calls (a large phantom).
        pending: deque = deque()
        for call in zip(*columns, strict=True):
            submitted = (_profiled_call, function, *call) if profiled else (function, *call)
            pending.append(pool.submit(*submitted))
            if len(pending) >= 2 * workers:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())
