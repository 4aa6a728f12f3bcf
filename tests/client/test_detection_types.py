"""The client reads a detector's answers (issue 25): predict's boxes and an explanation's box target."""

from __future__ import annotations

from cnnviz_client.types import ExplainResult, PredictResult


def test_predict_result_reads_detections():
    res = PredictResult.from_json({"model": "shapes", "input_size": [64, 64], "task": "detection", "images": [
        {"index": 0, "width": 128, "height": 96, "predictions": [],
         "detections": [{"index": 0, "box": [1.5, 2, 30, 40.25], "label": "circle", "class_index": 1, "score": 0.9}]}]})
    (d,) = res.images[0].detections
    assert d.box == (1.5, 2, 30, 40.25) and d.label == "circle" and d.index == 0 and res.images[0].predictions == []
    assert PredictResult.from_json({"model": "m", "input_size": [8, 8], "images": [
        {"index": 0, "width": 8, "height": 8, "predictions": []}]}).images[0].detections is None


def test_explain_result_reads_a_box_target():
    target = {"kind": "box", "index": 3, "label": "triangle", "score": 0.92, "box": [31.3, 37.6, 54.8, 61.1],
              "detection": 0}
    res = ExplainResult.from_json({"model": "shapes", "method": "drise", "layer": None, "input_size": [64, 64],
                                   "images": [{"index": 0, "width": 64, "height": 64, "explanations": [
                                       {"target": target, "map": {"shape": [64, 64], "min": 0, "max": 1}}]}]})
    t = res.images[0].explanations[0].target
    assert t.kind == "box" and t.box == [31.3, 37.6, 54.8, 61.1] and t.detection == 0 and t.label == "triangle"
