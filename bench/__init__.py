"""Benchmarks: ``python -m bench`` runs them all, ``python -m bench NAME [options]`` one of them.

A benchmark is a module of this package with a ``run(argv: list[str] | None) -> int`` function (and,
optionally, ``NAME``); ``bench.common`` holds what they share. Benchmarks report, they do not gate: each prints
its measurements with PASS/FAIL against its targets and exits 0 unless something broke.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

NOT_BENCHMARKS = frozenset({"common", "__main__"})


def available() -> dict[str, Callable[[list[str] | None], int]]:
    """Benchmark name -> its ``run`` function, for every module of this package that has one."""
    found: dict[str, Callable[[list[str] | None], int]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in NOT_BENCHMARKS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        run = getattr(module, "run", None)
        if callable(run):
            found[getattr(module, "NAME", info.name)] = run
    return found
