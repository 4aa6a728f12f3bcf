"""The README's method comparison is drawn with the API's defaults: bench/make_examples.py may only
change the parameters it names (and the README states), never how a map is rendered."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from core.schemas.explain import params_model

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "make_examples.py"
RENDERING = {"kind", "colormap", "clip_percentile", "mode", "outline_fraction", "alpha", "normalize"}


def _script():
    spec = importlib.util.spec_from_file_location("make_examples", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_method_comparison_uses_the_api_defaults():
    mod = _script()
    assert not RENDERING & set(mod.METHOD_OUTPUT), "the README pictures must use the default rendering"
    for name in mod.METHODS_SHOWN:
        used = mod.method_params(name).model_dump()
        default = params_model(name)().model_dump()
        named = set(mod.METHOD_PARAMS.get(name, {}))
        assert set(used) == set(default)
        for key in set(default) - named - {"output"}:
            assert used[key] == default[key], (name, key)
        for key in set(default["output"]) - set(mod.METHOD_OUTPUT):
            assert used["output"][key] == default["output"][key], (name, "output", key)
        for key in named:  # what it names really differs (else it should not be named)
            assert used[key] != default[key], (name, key)
