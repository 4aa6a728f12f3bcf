"""The examples of docs/architecture.md still work: each is executed as written, seen by the service, removed.

A newcomer copies these to add a method, a job type, a route or a target kind; if the code they
show drifts from the code that runs, this fails.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def example(name: str) -> str:
    """The code block right after ``<!-- example: NAME -->``."""
    m = re.search(rf"<!-- example: {re.escape(name)} -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"docs/architecture.md has no example {name!r}"
    return m.group(1)


def blocks(code: str) -> dict[str, str]:
    """The parts of an example, keyed by the ``# path`` comment that heads each."""
    parts = re.split(r"(?m)^# (\S+.*)$", code)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.fixture
def scratch_method() -> Iterator[None]:
    from cnnviz.attribution import METHODS

    yield
    METHODS.pop("maxgradcam", None)


def test_method_example(scratch_method: None, client: TestClient, chelsea_jpeg: bytes) -> None:
    import cnnviz.attribution.cam as cam

    exec(example("method"), vars(cam).copy())  # as if written in cam.py
    from cnnviz.attribution import METHODS

    assert type(METHODS["maxgradcam"]).map_kinds == ("positive",)  # its family's kinds, nothing to declare
    listed = {m["name"]: m for m in client.get("/v1/methods").json()["methods"]}
    assert listed["maxgradcam"]["map_kinds"] == ["positive"] and listed["maxgradcam"]["title"] == "Max-Grad-CAM"
    r = client.post("/v1/models/efficientnet-lite0/explain/maxgradcam",
                    files={"image": ("c.jpg", chelsea_jpeg, "image/jpeg")},
                    data={"params": '{"target": 285, "resolution": 96, "output": {"heatmap": false}}'})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "maxgradcam" and body["images"][0]["explanations"][0]["target"]["index"] == 285


@pytest.fixture
def scratch_job_type() -> Iterator[None]:
    from core.jobtypes import JOB_TYPES

    yield
    JOB_TYPES.pop("blur", None)


def test_job_type_example(scratch_job_type: None, client: TestClient, catalog: Any) -> None:
    import torch

    import core.jobtypes as jobtypes
    import core.schemas.synthesis as synthesis
    from core.jobtypes import SubmitContext

    parts = blocks(example("job type"))
    schema_ns = vars(synthesis).copy()
    exec(parts["core/schemas/synthesis.py"], schema_ns)

    def blur(model: Any, image: torch.Tensor, sigma: float = 1.0, steps: int = 1, **_: Any) -> torch.Tensor:
        return image

    def estimate_blur_cost(model: Any, sigma: float = 1.0, steps: int = 1) -> float:
        return float(steps)

    ns = {**vars(jobtypes), "BlurParams": schema_ns["BlurParams"], "blur": blur,
          "estimate_blur_cost": estimate_blur_cost}
    exec(parts["core/jobtypes.py"], ns)
    entry = jobtypes.JOB_TYPES["blur"]
    # the same envelope every type gets, the same check-and-price, the same listing
    job = jobtypes._envelope(entry).model_validate({"type": "blur", "params": {"sigma": 2.0, "steps": 3}})
    prepared = entry.check(SubmitContext(catalog, "owner"), job, [object()])
    assert prepared.cost == 3.0 and prepared.spec["type"] == "blur"
    listed = {m["name"]: m for m in client.get("/v1/methods").json()["methods"]}
    assert listed["blur"]["kind"] == "job" and listed["blur"]["queue"] == "long"
    assert listed["blur"]["params_schema"]["properties"]["sigma"]["maximum"] == 20


def test_route_example(lite0: Any) -> None:
    from service.deps import ModelDep, get_model

    ns: dict[str, Any] = {"APIRouter": APIRouter, "ModelDep": ModelDep}
    exec("from __future__ import annotations\n" + blocks(example("route"))["service/routes/labels.py"], ns)
    app = FastAPI()
    app.include_router(ns["router"])
    app.dependency_overrides[get_model] = lambda: lite0
    with TestClient(app) as c:
        labels = c.get("/v1/models/efficientnet-lite0/labels").json()
    assert len(labels) == 1000 and labels[285] == "Egyptian cat"


@pytest.fixture
def scratch_target_kind() -> Iterator[None]:
    from core.targets import TARGET_KINDS

    before = dict(TARGET_KINDS)
    yield
    TARGET_KINDS.clear()
    TARGET_KINDS.update(before)


def test_target_kind_example(scratch_target_kind: None, lite0: Any, chelsea_jpeg: bytes) -> None:
    import core.targets as targets
    from cnnviz.attribution import ClassTargets
    from cnnviz.errors import closest
    from core.errors import Invalid
    from core.explaining import estimate_cost, run_explanation, targets_from
    from core.imaging import decode_image
    from core.schemas.explain import ExplainParams

    parts = blocks(example("target kind"))
    field_line = parts["core/schemas/explain.py, in ExplainParams"].strip()
    schema_ns: dict[str, Any] = {"ExplainParams": ExplainParams, **vars(__import__("pydantic"))}
    # Written into ExplainParams the field is a shared one; in this subclass, say so to engine_params.
    exec(f"class LabelParams(ExplainParams):\n{textwrap.indent(field_line, '    ')}\n"
         "    def engine_params(self, method):\n"
         "        shared = self.model_dump(exclude={'target_label'})\n"
         "        return ExplainParams.engine_params(ExplainParams(**shared), method)\n", schema_ns)
    ns = {**vars(targets), "closest": closest, "Invalid": Invalid, "ClassTargets": ClassTargets}
    exec(parts["core/targets.py"], ns)

    label_params = schema_ns["LabelParams"]
    params = label_params(target_label="Egyptian cat", resolution=96)
    assert targets.target_kind(params) is ns["LABEL"]
    assert targets_from(lite0, params, 1) == ClassTargets(indices=((285,),))
    assert estimate_cost(lite0, "gradcam", params, 1) == estimate_cost(lite0, "gradcam", label_params(
        target=285, resolution=96), 1)
    assert targets.target_kind(label_params(top_k=2)).name == "class"
    with pytest.raises(Invalid) as bad:
        targets_from(lite0, label_params(target_label="Egyptian kat"), 1)
    assert "Egyptian cat" in bad.value.extra["choices"]
    answer = run_explanation(lite0, "gradcam", [decode_image(chelsea_jpeg)], params)
    target = answer.images[0].explanations[0].target
    assert (target.kind, target.index, target.label) == ("class", 285, "Egyptian cat")


def test_input_kind_example() -> None:
    """The input-kind example registers, decodes through the registry with its budget, and is taken away."""
    import numpy as np

    import core.inputkinds as kinds
    from core.errors import TooLarge
    from core.settings import Settings

    try:
        exec(example("input kind"), {**vars(kinds), "np": np})
        kind = kinds.input_kind("trace")
        settings = Settings(redis_url=None, max_signal_samples=100)
        d = kinds.decode_input(kind, b"1\n2.5\n-3\n" * 10, kind.budget(settings), settings, model="m")
        assert d.values.shape == (1, 30) and float(d.values[0, 1]) == 2.5
        with pytest.raises(TooLarge):
            kinds.decode_input(kind, b"1\n" * 200, kind.budget(settings), settings, model="m")
    finally:
        kinds.INPUT_KINDS.pop("trace", None)
