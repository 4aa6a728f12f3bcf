"""Region targets of the repository's segmenter against a live stack: the hand-off to an explain job (progress,
the same answer as inline, cancel), and the Python client and command line taking region targets.

One stack for the module, serving models/shapes with an inline budget so small that a region occlusion is a job.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from cnnviz_client import Client, RetryPolicy, region
from cnnviz_client.cli import main
from PIL import Image

from tests.jobs.jobkit import KEY_A, TERMINAL, Proc, Stack, wait_done, wait_status

pytestmark = pytest.mark.jobs

SCENES = Path(__file__).resolve().parents[2] / "models" / "shapes"
MODEL = "shapes-segmenter"


@pytest.fixture(scope="module")
def seg_stack(redis_url: str) -> Iterator[Stack]:
    s = Stack(redis_url, extra_env={"CNNVIZ_MODELS": str(SCENES / "models.toml"), "CNNVIZ_INLINE_BUDGET": "3"})
    try:  # (started by hand to stop it whatever happens, and to wait longer on a busy machine)
        s.api = Proc("api", ["serve", "--host", "127.0.0.1", "--port", str(s.port)], s.env)
        s.start_worker()
        s.wait_http(timeout_s=180)
        s.wait_workers(1, timeout_s=180)
        yield s
    finally:
        s.stop()
        s.cleanup_redis()


@pytest.fixture(scope="module")
def scene() -> Path:
    return SCENES / "segmenter-scenes" / "scene-1.png"


def _explain(api: httpx.Client, image: bytes, method: str, params: dict, prefer_async: bool = False) -> httpx.Response:
    headers = {"Prefer": "respond-async"} if prefer_async else {}
    return api.post(f"/v1/models/{MODEL}/explain/{method}", files=[("image", ("s.png", image, "image/png"))],
                    data={"params": json.dumps(params)}, headers=headers)


def test_region_explain_over_the_budget_runs_as_a_job_with_the_inline_answer(seg_stack: Stack, scene: Path) -> None:
    params = {"region": {"target": 1, "box": [4, 4, 40, 40]}, "window": 16, "stride": 8,
              "output": {"overlay": False, "heatmap": False, "raw": True}}
    with seg_stack.client() as api:
        inline = _explain(api, scene.read_bytes(), "occlusion", params)
        assert inline.status_code == 202, inline.text  # 25 windows on the full engine: over a budget of 3
        job = wait_done(api, inline.json()["id"], timeout_s=120)
        assert job["status"] == "succeeded", job
        assert job["progress"]["step"] >= job["progress"]["total"] * 0.9
        answer = api.get(f"/v1/jobs/{job['id']}/result").json()
        e = answer["images"][0]["explanations"][0]
        assert e["target"]["kind"] == "region" and e["region"]["source"] == "box" and e["region"]["area"] == 36 * 36
        # The same request computed in-process gives the same map: the job ran the same pipeline.
        from cnnviz.models import Catalog
        from core.explaining import run_explanation
        from core.imaging import decode_image
        from core.schemas.explain import params_model

        model = Catalog.open(str(SCENES / "models.toml"), "cpu", None).get(MODEL)
        local = run_explanation(model, "occlusion", [decode_image(scene.read_bytes())],
                                params_model("occlusion").model_validate(params)).images[0].explanations[0]
        assert np.allclose(np.array(e["map"]["values"]), np.array(local.map.values), atol=1e-4)


def test_a_long_region_job_reports_progress_and_cancels(seg_stack: Stack, scene: Path) -> None:
    params = {"region": {"target": 2}, "masks": 8000, "batch_size": 1}
    with seg_stack.client() as api:
        r = _explain(api, scene.read_bytes(), "rise", params)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        body = wait_status(api, job, lambda b: b["status"] in TERMINAL or (b["status"] == "running"
                                                                           and b["progress"]["step"] >= 20), 90)
        assert body["status"] == "running", body
        t0 = time.monotonic()
        assert api.delete(f"/v1/jobs/{job}").status_code == 202
        body = wait_status(api, job, lambda b: b["status"] != "running", timeout_s=30)
        assert body["status"] == "canceled" and time.monotonic() - t0 < 5, body


def test_client_and_cli_take_region_targets(seg_stack: Stack, scene: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with Client(seg_stack.base, api_key=KEY_A, timeout=60, retry=RetryPolicy(attempts=3, backoff=0.1)) as c:
        pred = c.predict(str(scene), MODEL, masks=True)
        seg = pred.images[0].segmentation
        assert seg is not None and seg.labels().shape == (64, 64)
        assert sum(a.pixels for a in seg.classes) == 64 * 64 and set(seg.masks) == {a.index for a in seg.classes}
        shape = next(a.index for a in seg.classes if a.index != 0)
        ex = c.explain(str(scene), "gradcam", MODEL, region=region(shape), faithfulness={})
        e = ex.explanations[0]
        assert e.target.kind == "region" and e.target.index == shape and e.region["source"] == "predicted"
        assert e.region["area"] == int((seg.labels() == shape).sum())
        assert e.faithfulness["energy_in_region"] is not None
        boxed = c.explain(str(scene), "saliency", MODEL, region=region(shape, polygon=[(0, 0), (30, 0), (0, 30)]))
        assert boxed.explanations[0].region["source"] == "polygon"
    monkeypatch.setenv("CNNVIZ_URL", seg_stack.base)
    monkeypatch.setenv("CNNVIZ_API_KEY", KEY_A)
    capsys.readouterr()
    out_png = tmp_path / "region.png"
    rc = main(["explain", str(scene), "--model", MODEL, "--method", "gradcam", "--region", str(shape),
               "--region-box", "0,0,40,40", "--out", str(out_png)])
    out = capsys.readouterr().out
    assert rc == 0 and "region (box): bounding box (0, 0, 40, 40), 1600 px" in out, out
    assert Image.open(out_png).size == (64, 64)
    rc = main(["predict", str(scene), "--model", MODEL, "--label-map", str(tmp_path / "labels.png")])
    out = capsys.readouterr().out
    assert rc == 0 and "label map:" in out and "__background__" in out, out
    assert np.array_equal(np.asarray(Image.open(tmp_path / "labels.png")), seg.labels())
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(pred.raw["images"][0]["segmentation"]
                                                                ["label_map_png"]))))
    assert np.array_equal(decoded, seg.labels())
