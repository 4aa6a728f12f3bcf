"""The shape of the code: layers, no import cycles, one declaration per parameter and per job type.

import-linter (run by ``make test``) keeps the layer contract; these tests add what it does not
check, on the real import graph (grimp, the library under import-linter, counts function-level
imports too) and on the real registries.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from cnnviz.attribution import METHODS
from cnnviz.params import NoParams, field_specs
from core.jobtypes import JOB_REQUEST, JOB_REQUESTS, JOB_TYPES
from core.schemas.explain import CamExplainParams, ExplainParams, params_model

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cnnviz", "core", "service", "workers", "stack")


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycle_anywhere() -> None:
    graph = grimp.build_graph(*PACKAGES)
    modules = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    assert _cycles(graph, modules) == []


def test_the_cycle_finder_finds_cycles() -> None:
    class Graph:
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, m: str) -> set[str]:
            return self.edges[m]

    assert _cycles(Graph(), {"a", "b", "c", "d"}) == [["a", "b", "c"]]  # type: ignore[arg-type]


def test_import_linter_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "broken" in run.stdout and " 0 broken" in run.stdout


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_request_schema_is_the_engine_declaration(name: str) -> None:
    """Every engine parameter appears in the request model with the same default, bounds and type."""
    engine = METHODS[name].Params
    model = params_model(name)
    base = CamExplainParams if METHODS[name].sweeps_layers else ExplainParams  # the CAM family adds layers
    shared = set(base.model_fields)
    own = {k for k in model.model_fields if k not in shared}
    assert own == {f.name for f in dataclasses.fields(engine)}
    if engine is NoParams:
        assert model is base
    props = model.model_json_schema()["properties"]
    for fname, _hint, default, bounds, _desc in field_specs(engine):
        assert model.model_fields[fname].default == default, fname
        js = props[fname]
        arms = js.get("anyOf", [js])
        numeric = [a for a in arms if a.get("type") in ("integer", "number")]
        for a in numeric:
            if bounds.ge is not None:
                assert a["minimum"] == bounds.ge, fname
            if bounds.le is not None:
                assert a["maximum"] == bounds.le, fname
        # And the engine enforces the same bound on its own (defence in depth).
        if bounds.le is not None and numeric:
            with pytest.raises(ValueError):
                engine(**{fname: type(bounds.le)(bounds.le) + 1})


def test_one_registry_entry_per_job_type_drives_everything() -> None:
    assert set(JOB_REQUESTS) == set(JOB_TYPES)
    union = JOB_REQUEST.json_schema()
    assert set(union["discriminator"]["mapping"]) == set(JOB_TYPES)
    for name, entry in JOB_TYPES.items():
        assert entry.queue in ("short", "long")
        module, _, fn = entry.runner.rpartition(".")
        assert module.startswith("workers.runners.") and fn == "run"
        assert JOB_REQUESTS[name].model_fields["params"].annotation is entry.params


def test_runner_paths_of_an_older_release_still_resolve() -> None:
    """rq stores a queued job's function as a dotted string; jobs queued before workers/jobs/ became
    workers/runners/ name ``workers.jobs.<family>.run`` and must run on a newer worker."""
    from rq.utils import import_attribute

    for entry in JOB_TYPES.values():
        old = entry.runner.replace("workers.runners.", "workers.jobs.", 1)
        assert import_attribute(old) is import_attribute(entry.runner), old


def test_no_two_job_side_modules_share_a_name() -> None:
    """Each module of the job side is named after its role (issue 30): no second ``jobs`` module."""
    paths = [p.relative_to(ROOT) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    named_jobs = sorted(str(p) for p in paths if p.stem == "jobs" or "jobs" in p.parts[:-1])
    # routes are named after their URL (/v1/jobs); workers/jobs.py only aliases old rq paths
    assert named_jobs == ["service/routes/jobs.py", "workers/jobs.py"]


def test_no_job_type_or_parameter_table_is_restated() -> None:
    """The tables the registry replaced stay gone (a new one would drift from it)."""
    text = "\n".join(p.read_text() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    for gone in ("SYNTHESIS_JOBS", "TRAINING_JOBS", "JOB_FUNCTIONS", "SYNTHESIS_REQUESTS", "int_param(",
                 "float_param(", "choice_param(", "STYLE_ARGS", "HEAD_ARGS"):
        assert gone not in text, gone
