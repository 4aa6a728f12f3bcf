"""The synthesis defaults are declared twice (the engine's keyword defaults, the API's parameter
models) and must agree; the README's pictures and examples must be made with them.

A picture made with tuned settings that a user's ``{"target": 285}`` does not get is what
issue 31 was about: so ``bench/make_examples.py`` may name only sizes, the class and images for
the synthesis pictures, and the README's JSON example must name the same.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest

from cnnviz.synthesis import DeepDreamConfig
from core.jobtypes import JOB_TYPES
from core.schemas.synthesis import DeepDreamParams

ROOT = Path(__file__).resolve().parents[2]
# What an example may name: what to draw and how big, never how to optimize it.
NOT_TUNING = {"target", "size", "style_size", "source_size", "preview_every"}
SYNTHESIS = ("class_viz", "inversion", "texture", "texture_nn", "style")


def _script():
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "bench" / "make_examples.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _same(a: object, b: object) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple | list) else v  # noqa: E731
    return norm(a) == norm(b)


@pytest.mark.parametrize("job", SYNTHESIS)
def test_api_defaults_are_the_engines(job):
    entry = JOB_TYPES[job]
    engine = inspect.signature(entry.engine).parameters
    fields = entry.params.model_fields
    shared = [n for n in fields if n in engine and engine[n].default is not inspect.Parameter.empty]
    assert len(shared) >= 3, job
    for name in shared:
        assert _same(fields[name].default, engine[name].default), (job, name, fields[name].default,
                                                                 engine[name].default)


def test_deepdream_api_defaults_are_the_configs():
    config = {f.name: f.default for f in dataclasses.fields(DeepDreamConfig)}
    for name, field in DeepDreamParams.model_fields.items():
        if name in config:
            assert _same(field.default, config[name]), name


def test_example_pictures_are_made_with_the_defaults():
    examples = _script().SYNTHESIS_EXAMPLES
    assert set(examples) >= {"class_viz", "deepdream", "inversion", "texture", "style"}
    for job, params in examples.items():
        assert set(params) <= NOT_TUNING, (job, set(params) - NOT_TUNING)
        model = DeepDreamParams if job == "deepdream" else JOB_TYPES[job].params
        model.model_validate(params)  # and the API accepts exactly this


def test_readme_job_examples_are_the_pictures():
    """The README's JSON job examples of these types ask for what the pictures show: the defaults."""
    readme = (ROOT / "README.md").read_text()
    examples = _script().SYNTHESIS_EXAMPLES
    for job in ("class_viz", "deepdream"):
        found = re.findall(r'\{"type": "' + job + r'", "params": (\{[^}]*\})\}', readme)
        assert found, f"the README has a {job} JSON example"
        for params in found:
            asked = {k: v for k, v in json.loads(params).items() if k != "preview_every"}
            assert asked == examples[job], (job, asked)
