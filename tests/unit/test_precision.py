"""Reduced precision without model weights: what a device offers, the per-thread autocast scope, the schema.

The maps' agreement with fp32 on the real model is in tests/model/test_precision_lite0.py.
"""

from __future__ import annotations

import threading

import pytest
import torch
from pydantic import ValidationError

from cnnviz.errors import EngineError
from cnnviz.precision import PRECISIONS, active, check_precision, forward_precision, offered, run_precision
from core.schemas.explain import METHOD_PARAMS, ExplainParams, ExplainResponse, params_model


def test_fp32_is_always_offered_and_first():
    for device in ("cpu", "meta"):
        assert offered(device)[0] == "fp32"
    assert set(offered("cpu")) <= set(PRECISIONS)
    assert offered("meta") == ("fp32",)  # no autocast there at all


def test_a_precision_the_device_lacks_is_an_engine_error_with_the_choices():
    with pytest.raises(EngineError) as e:
        check_precision("meta", "bf16")
    assert e.value.slug == "precision-unsupported"
    assert e.value.choices == ["fp32"] and e.value.extra == {"device": "meta"}
    with pytest.raises(EngineError) as e:
        check_precision("cpu", "int8")
    assert e.value.slug == "bad-parameter"


@pytest.mark.skipif("fp16" in offered("cpu"), reason="this CPU has native fp16 kernels")
def test_cpu_without_native_fp16_refuses_it_and_says_why():
    with pytest.raises(EngineError, match="no native fp16") as e:
        check_precision("cpu", "fp16")
    assert "fp16" not in e.value.choices


def test_forward_precision_is_a_no_op_outside_an_engine_call_and_at_fp32():
    with forward_precision():
        assert not torch.is_autocast_enabled("cpu")
    with run_precision("cpu", "fp32") as run, forward_precision():
        assert not torch.is_autocast_enabled("cpu")
    assert run.ran == "fp32" and active() is None


@pytest.mark.skipif("bf16" not in offered("cpu"), reason="this CPU has no native bf16")
def test_bf16_autocasts_forwards_only_in_its_thread_and_is_always_undone():
    seen: dict[str, bool] = {}

    def other() -> None:
        with forward_precision():
            seen["other"] = torch.is_autocast_enabled("cpu")

    with run_precision("cpu", "bf16") as run:
        assert not torch.is_autocast_enabled("cpu")  # only forward passes are lowered
        with forward_precision():
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with run_precision("cpu", None) as nested:  # a nested engine call inherits
            assert nested is run
    assert y.dtype == torch.bfloat16 and run.ran == "bf16" and run.forwards == 1
    assert seen == {"other": False} and active() is None
    with pytest.raises(RuntimeError), run_precision("cpu", "bf16"), forward_precision():
        raise RuntimeError("boom")
    assert active() is None and not torch.is_autocast_enabled("cpu")


def test_a_declined_or_unused_precision_reports_fp32():
    with run_precision("cpu", "bf16", reason="not for this method") as run, forward_precision():
        assert not torch.is_autocast_enabled("cpu")
    assert (run.asked, run.ran, run.reason) == ("bf16", "fp32", "not for this method")
    if "bf16" in offered("cpu"):
        with run_precision("cpu", "bf16") as run:
            pass  # no forward ran under autocast
        assert run.ran == "fp32"


def test_precision_is_a_bounded_choice_in_every_explain_schema():
    for model in (ExplainParams, *METHOD_PARAMS.values()):
        prop = model.model_json_schema()["properties"]["precision"]
        assert prop["enum"] == ["fp32", "bf16", "fp16"] and prop["default"] == "fp32", model.__name__
    assert ExplainResponse.model_json_schema()["properties"]["precision"]["enum"] == ["fp32", "bf16", "fp16"]
    assert params_model("occlusion").model_validate({"precision": "bf16"}).precision == "bf16"
    with pytest.raises(ValidationError) as e:
        params_model("gradcam").model_validate({"precision": "int8"})
    assert e.value.errors()[0]["loc"] == ("precision",)


def test_precision_is_not_an_engine_parameter():
    from cnnviz.attribution import get_method

    p = params_model("occlusion").model_validate({"precision": "bf16", "window": 16, "stride": 8})
    typed = p.engine_params(get_method("occlusion"))
    assert not hasattr(typed, "precision") and typed.window == 16
