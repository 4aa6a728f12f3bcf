"""Target kinds (core/targets.py): each request selects exactly one, and each kind's declaration is what runs."""

from __future__ import annotations

import pytest
import torch

from cnnviz.attribution import ClassTargets, RegionTargets, UnitTarget
from core.errors import Invalid
from core.schemas.explain import ExplainParams, RegionTargetParams, UnitTargetParams
from core.targets import TARGET_KINDS, target_kind


class _Classifier:
    task = "classification"


CLASSIFIER = _Classifier()  # what the class kind's engine reads of a model: its task

TARGET_FIELDS = {"target", "targets", "top_k", "unit", "region", "box"}


def test_every_target_field_belongs_to_one_kind() -> None:
    owned = [f for k in TARGET_KINDS.values() for f in k.fields]
    assert sorted(owned) == sorted(TARGET_FIELDS) and TARGET_FIELDS <= set(ExplainParams.model_fields)
    assert list(TARGET_KINDS)[-1] == "class"  # the default is tried last


@pytest.mark.parametrize(("params", "kind", "per_image", "engine"), [
    (ExplainParams(), "class", 1, ClassTargets(top_k=1)),
    (ExplainParams(top_k=3), "class", 3, ClassTargets(top_k=3)),
    (ExplainParams(target=7), "class", 1, ClassTargets(indices=((7,),))),
    (ExplainParams(targets=[[1, 2], [3]]), "class", 2, ClassTargets(indices=((1, 2), (3,)))),
    (ExplainParams(unit=UnitTargetParams(layer="conv", channel=4)), "unit", 1, UnitTarget("conv", 4)),
    (ExplainParams(unit=UnitTargetParams(layer="conv", channel=4, y=1, x=2)), "unit", 1, UnitTarget("conv", 4, 1, 2)),
])
def test_kind_selection_count_and_engine_targets(params: ExplainParams, kind: str, per_image: int,
                                                 engine: object) -> None:
    k = target_kind(params)
    assert k.name == kind
    assert k.per_image(params) == per_image
    assert k.engine(CLASSIFIER, params, 2) == engine  # type: ignore[arg-type]


def test_class_rows_must_match_the_images() -> None:
    with pytest.raises(Invalid) as exc:
        target_kind(ExplainParams(targets=[[1]])).engine(CLASSIFIER, ExplainParams(targets=[[1]]), 2)  # type: ignore[arg-type]
    assert exc.value.slug == "bad-targets"


def test_answers_name_targets_by_kind() -> None:
    class Model:
        labels = ("cat", "dog")

    unit = ExplainParams(unit=UnitTargetParams(layer="conv", channel=4, y=0, x=0))
    channel = ExplainParams(unit=UnitTargetParams(layer="conv", channel=4))
    assert target_kind(unit).describe(Model(), unit, 4).__dict__ == {"kind": "neuron", "label": "conv[4]"}  # type: ignore[arg-type]
    assert target_kind(channel).describe(Model(), channel, 4).kind == "channel"  # type: ignore[arg-type]
    cls = ExplainParams(target=1)
    assert target_kind(cls).describe(Model(), cls, 1).label == "dog"  # type: ignore[arg-type]
    assert target_kind(cls).describe(Model(), cls, 9).label is None  # type: ignore[arg-type]
    assert target_kind(cls).probability and not target_kind(unit).probability


def test_region_kind_counts_classes_and_rasterizes_its_box_at_the_network_input() -> None:
    class Prep:
        input_size = 8

    class Model:
        labels = ("__background__", "circle", "square")
        preprocessing = Prep()

    top = ExplainParams(region=RegionTargetParams(top_k=2))
    assert target_kind(top).name == "region" and target_kind(top).per_image(top) == 2
    t = target_kind(top).engine(Model(), top, 1)  # type: ignore[arg-type]
    assert isinstance(t, RegionTargets) and t.regions is None and t.top_k == 2 and t.skip == (0,)
    boxed = ExplainParams(region=RegionTargetParams(target=1, box=(10, 0, 20, 10))).with_image_sizes([(20, 40)])
    t = target_kind(boxed).engine(Model(), boxed, 1)  # type: ignore[arg-type]
    assert t.indices == ((1,),) and target_kind(boxed).per_image(boxed) == 1
    want = torch.zeros(1, 8, 8, dtype=torch.bool)
    want[0, 0:4, 2:4] = True  # x 10..20 of 40 -> 2..4 of 8, y 0..10 of 20 -> 0..4 of 8
    assert torch.equal(t.regions, want)
    assert target_kind(boxed).describe(Model(), boxed, 1).__dict__ == {"kind": "region", "label": "circle"}  # type: ignore[arg-type]
    assert not target_kind(boxed).probability


@pytest.mark.parametrize(("task", "params", "slug"), [
    ("classification", {"region": {"target": 1}}, "task-mismatch"),
    ("detection", {"region": {"target": 1, "box": [0, 0, 8, 8]}}, "task-mismatch"),
    ("segmentation", {"target": 1}, "task-mismatch"),
    ("segmentation", {"top_k": 2}, "task-mismatch"),
    ("classification", {"box": {"index": [0]}}, "task-mismatch"),
    ("segmentation", {"box": {"top_k": 2}}, "task-mismatch"),
    ("detection", {"target": 1}, "task-mismatch"),
])
def test_targets_of_another_task_are_422_naming_the_task(task: str, params: dict, slug: str) -> None:
    import dataclasses

    from tiny import tiny_model

    from core.explaining import check_explain

    model = tiny_model()
    model.spec = dataclasses.replace(model.spec, task=task)
    with pytest.raises(Invalid) as exc:
        check_explain(model, "gradcam", params, 1, [(32, 32)])
    assert exc.value.slug == slug and exc.value.extra["task"] == task and f"a {task} model" in str(exc.value)


def test_box_kind_selection_count_and_engine_targets() -> None:
    from types import SimpleNamespace

    from cnnviz.attribution import BoxTargets
    from core.schemas.explain import BoxTargetParams

    detector = SimpleNamespace(task="detection", name="shapes", labels=("__background__", "circle", "square"),
                               preprocessing=SimpleNamespace(input_size=64))
    params = ExplainParams(box=BoxTargetParams(index=[0, 2]))
    assert target_kind(params).name == "box" and target_kind(params).per_image(params) == 2
    assert target_kind(params).engine(detector, params, 1) == BoxTargets(indices=(0, 2))  # type: ignore[arg-type]
    ref = ExplainParams(box=BoxTargetParams(reference=[{"box": (0, 0, 64, 32), "label": "square"}]))
    sized = ref.with_image_sizes([(64, 128)])  # a 128 x 64 original: x halves on the 64 px input
    assert target_kind(ref).engine(detector, sized, 1).references == ((((0.0, 0.0, 32.0, 32.0), 2),),)  # type: ignore[arg-type, union-attr]
    with pytest.raises(Invalid) as exc:  # refused by the kind's check, at submission
        target_kind(params).check(SimpleNamespace(task="classification", name="lite"), params, None)  # type: ignore[arg-type, misc]
    assert exc.value.slug == "task-mismatch"
