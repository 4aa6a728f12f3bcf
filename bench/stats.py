"""Rows over fresh processes: each run of a bench group is its own process, and a row is read from all of them.

Why fresh processes: one process's allocator state, oneDNN primitive caches, OpenMP teams and
the neighbours of the moment all shape its timings together, so repeats inside one process agree
with each other far better than with the next process. A figure that holds over several fresh
processes, interleaved with the other groups, is one a reader can expect to see again; the spread
(min-max over the runs) is printed beside every median, and a target counts as met only when it
was met in every run.

Each row says what kind of comparison it is:

- ``like-for-like``: the same work on both sides (same model copy, layout, dtype, threads, input,
  batch size and number of forwards), the peer at its best setting;
- ``advantage``: a speed-up cnnviz has and a user really gets (compilation, folding, incremental
  occlusion, adaptive quadrature), labelled as such beside its like-for-like row;
- ``user's view``: what a client sees end to end (an HTTP answer) beside a peer in-process;
- ``overhead``: a difference in ms between two ways of doing the same work;
- ``context``: a figure with no peer or no target.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

Run = dict[str, float]
"""One fresh process's measurements, by key (ms, req/s, MB, ratios)."""


@dataclass(frozen=True)
class Spec:
    """How one row is read from the runs: ``value`` per run, compared with ``target`` per run."""

    what: str
    kind: str
    ours: Callable[[Run], float] | None
    peer: Callable[[Run], float] | None
    value: Callable[[Run], float]
    unit: str  # "x", "ms", "%", "req/s"
    target: tuple[str, float] | None = None  # (">=" or "<=" or "<", bound)
    peer_name: str = ""
    cells: str = "ms"  # the unit of the ours and peer cells
    note: str | Callable[[list[Run]], str] = ""
    memory: Callable[[list[Run]], str] | None = None
    needs: tuple[str, ...] = ()  # keys a run must hold for the row (a group that did not run)
    block: str = "speed-targets"  # the docs block the row is written to


def _ok(v: float, target: tuple[str, float]) -> bool:
    op, bound = target
    return {">=": v >= bound, "<=": v <= bound, "<": v < bound, ">": v > bound}[op]


def fmt(v: float, unit: str) -> str:
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "%":
        return f"{v:.2%}"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "req/s":
        return f"{v:.1f} req/s"
    if unit == "s":
        return f"{v:.1f} s"
    if unit == "MB":
        return f"{v:.0f} MB"
    if unit.endswith("/s"):
        return f"{v:.1f} {unit}"
    return f"{v:.3g}"


def spread(values: list[float], unit: str) -> str:
    """Median with the min-max over the runs: ``1.52x (1.41-1.60x)``."""
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med, unit)
    lo, hi = fmt(min(values), unit), fmt(max(values), unit)
    return f"{fmt(med, unit)} ({lo.split(' ')[0].rstrip('x%')}-{hi})"


def cell(values: list[float], unit: str) -> str:
    return spread(values, unit) if values else ""


def row_cells(spec: Spec, runs: list[Run]) -> list[str] | None:
    """The table cells of one row, or None when no run holds its keys."""
    have = [r for r in runs if all(k in r for k in spec.needs)]
    if not have:
        return None
    values = [spec.value(r) for r in have]
    if spec.target is None:
        target, met = "context", ""
    else:
        hits = sum(_ok(v, spec.target) for v in values)
        target = f"{spec.target[0]} {fmt(spec.target[1], spec.unit)}"
        met = f"yes ({hits}/{len(values)})" if hits == len(values) else f"**no** ({hits}/{len(values)})"
    ours = cell([spec.ours(r) for r in have], spec.cells) if spec.ours else ""
    peer = cell([spec.peer(r) for r in have], spec.cells) if spec.peer else ""
    if spec.peer_name:
        peer = f"{spec.peer_name}: {peer}" if peer else spec.peer_name
    note = spec.note(have) if callable(spec.note) else spec.note
    memory = spec.memory(have) if spec.memory else ""
    return [spec.what, spec.kind, ours, peer, spread(values, spec.unit), target, met, memory, note]


HEADER = ["what", "kind", "ours", "peer", "value: median (min-max)", "target", "met (runs)", "resident memory",
          "note"]


def mb_spread(key: str, label: str) -> Callable[[list[Run]], str]:
    """A memory cell: ``label`` median MB (min-max) of ``key`` over the runs that hold it."""
    def cell(runs: list[Run]) -> str:
        vals = [r[key] for r in runs if key in r]
        return f"{label} {spread(vals, 'MB')}" if vals else ""
    return cell


def joined(*cells: Callable[[list[Run]], str]) -> Callable[[list[Run]], str]:
    return lambda runs: "; ".join(c for c in (f(runs) for f in cells) if c)


RESULT = "RESULT "
"""The line prefix a child process writes its measurements after, as JSON."""


def emit(run: Run) -> None:
    """A child's last word: its measurements, for :func:`spawn` to read."""
    import json
    import sys

    sys.stdout.write(RESULT + json.dumps(run) + "\n")
    sys.stdout.flush()


def spawn(script: str, group: str, argv: list[str]) -> Run:
    """Run ``script --child group *argv`` as a fresh process; the measurements it emitted."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, script, "--child", group, *argv], stdout=subprocess.PIPE, text=True,
                          check=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    return json.loads(lines[-1][len(RESULT):])


def fresh_runs(script: str, groups: list[str], runs: int, argv: list[str]) -> list[Run]:
    """``runs`` rounds of one fresh process per group, the groups interleaved round by round."""
    import logging
    import time

    log = logging.getLogger("bench")
    out = []
    for i in range(runs):
        run: Run = {}
        for group in groups:
            t0 = time.time()
            run.update(spawn(script, group, argv))
            log.info("run %d/%d %s: %.0f s", i + 1, runs, group, time.time() - t0)
        out.append(run)
    return out
