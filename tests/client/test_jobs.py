"""Jobs through the client against the live stack: submit, status, events (SSE, resumed with
Last-Event-ID), wait (with a progress bar), result, artifacts, cancel, idempotency; the async
client on the same calls."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from pathlib import Path

import pytest
from cnnviz_client import AsyncClient, AsyncJob, Client, Job, JobTimeoutError, ProblemError
from PIL import Image

from tests.jobs.jobkit import KEY_A, TINY

pytestmark = pytest.mark.jobs
PNG = b"\x89PNG\r\n\x1a\n"
LONG = {"octaves": 4, "steps": 500, "size": 128, "preview_every": 0}


def test_submit_events_wait_result_artifacts(viz: Client, cat_png: bytes, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    job = viz.submit("deepdream", cat_png, params={**TINY, "steps": 6, "preview_every": 2})
    assert isinstance(job, Job) and job.last_status is not None and job.last_status.status == "queued"
    events = list(job.events())
    kinds = [e.event for e in events]
    assert kinds[0] == "status" and kinds[-1] == "done" and "progress" in kinds and "preview" in kinds, kinds
    assert events[-1].data["status"] == "succeeded"
    steps = [e.data["step"] for e in events if e.event == "progress"]
    assert steps == sorted(steps) and steps[-1] == 6
    assert job.last_event_id == events[-1].id
    # Resumed after an event in the middle: exactly the events that came after it.
    mid = len(events) // 2
    assert [(e.id, e.event) for e in job.events(events[mid].id)] == [(e.id, e.event) for e in events[mid + 1:]]

    st = job.wait(timeout=30)
    assert st.succeeded and st.progress.fraction == 1.0 and job.last_status is st
    assert st.previews and st.links["result"] == f"/v1/jobs/{job.id}/result"
    res = job.result()
    assert res.media_type == "image/png" and res.content.startswith(PNG)
    with Image.open(res.save(tmp_path / "dream.png")) as im:
        assert im.size == (32, 24)  # the 64x48 upload's aspect at size 32
    meta = job.artifact("result.json")
    assert meta.is_json and meta.json()["width"] == 32 and len(meta.json()["objective"]) == 6
    assert job.artifact(st.previews[-1].href).content.startswith(PNG)  # by href as well as by name
    assert job.id in [j.id for j in viz.jobs()]
    assert job.id in [j.id for j in viz.jobs(status="succeeded", limit=500)]

    # wait(progress=True) draws a bar on stderr (one line per tenth when stderr is not a terminal).
    job2 = viz.submit("deepdream", params=TINY)
    capsys.readouterr()
    assert job2.wait(timeout=60, progress=True).succeeded
    out, err = capsys.readouterr()
    assert out == "" and job2.id in err and "100%" in err and "[" + "#" * 30 + "]" in err


def test_cancel_timeout_and_problems(viz: Client) -> None:
    job = viz.submit("deepdream", **LONG)
    deadline = time.monotonic() + 60
    while not (job.status().status == "running" and job.last_status.progress.step > 0):
        assert time.monotonic() < deadline, job.last_status
        time.sleep(0.1)
    with pytest.raises(JobTimeoutError) as info:
        job.wait(timeout=0.3)
    assert info.value.job.status == "running"
    with pytest.raises(ProblemError) as pinfo:
        job.result()
    assert pinfo.value.status == 409 and pinfo.value.slug == "job-not-succeeded"
    st = job.cancel()
    assert st.status == "canceled" or st.cancel_requested
    final = job.wait(timeout=15)
    assert final.status == "canceled" and final.artifacts == []
    # Its events end with done: canceled.
    assert list(job.events(from_start=True))[-1].data["status"] == "canceled"
    with pytest.raises(ProblemError) as pinfo:
        viz.submit("deepdream", octaves=99)
    assert pinfo.value.status == 422 and pinfo.value.errors
    with pytest.raises(ProblemError) as pinfo:
        viz.submit("no-such-type")
    assert pinfo.value.status in (404, 422) and pinfo.value.slug in ("unknown-job-type", "invalid-parameters")


def test_idempotency_key(viz: Client) -> None:
    key = f"client-{uuid.uuid4().hex}"
    a = viz.submit("deepdream", idempotency_key=key, seed=3, **TINY)
    b = viz.submit("deepdream", idempotency_key=key, seed=3, **TINY)
    assert a.id == b.id  # the same logical submit: one job
    c = viz.submit("deepdream", seed=3, **TINY)  # a fresh key per submit
    assert c.id != a.id
    with pytest.raises(ProblemError) as info:
        viz.submit("deepdream", idempotency_key=key, seed=4, **TINY)
    assert info.value.slug == "idempotency-key-reused"
    assert a.wait(timeout=60).succeeded and c.wait(timeout=60).succeeded


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in vars(cls).items() if not n.startswith("_") and callable(f)}


def test_async_client_has_the_same_surface() -> None:
    for sync, aio in ((Client, AsyncClient), (Job, AsyncJob)):
        s, a = _public(sync), _public(aio)
        if sync is Client:  # httpx's naming: close() / aclose()
            s["aclose"] = s.pop("close")
        assert set(s) == set(a), set(s) ^ set(a)
        for name in s:
            assert list(s[name].parameters) == list(a[name].parameters), name
    assert inspect.iscoroutinefunction(AsyncClient.explain) and inspect.isasyncgenfunction(AsyncJob.events)


def test_async_client_live(stack, cat_png: bytes, tmp_path: Path) -> None:
    async def run() -> None:
        async with AsyncClient(stack.base, api_key=KEY_A, timeout=30) as c:
            assert any(m.default for m in await c.models())
            assert "gradcam" in await c.methods()
            assert (await c.model()).labels[285] == "Egyptian cat"
            pred = await c.predict(cat_png, top_k=2)
            assert len(pred.top) == 2
            inline, handed = await asyncio.gather(c.explain(cat_png, "gradcam", resolution=64),
                                                  c.explain(cat_png, "gradcam", target=285))
            assert inline.job_id is None and handed.job_id and handed.explanations[0].target.index == 285
            job = await c.submit("deepdream", cat_png, **TINY)
            events = [e async for e in job.events()]
            assert events[0].event == "status" and events[-1].data["status"] == "succeeded"
            st = await job.wait(timeout=30)
            assert st.succeeded and (await job.status()).succeeded
            assert (await job.result()).content.startswith(PNG)
            assert (await job.artifact("result.json")).json()["width"] == 32
            assert job.id in [j.id for j in await c.jobs()]
            col = await c.create_collection([cat_png, cat_png])
            assert (await c.collection(col.id)).count == 2
            await c.delete_collection(col.id)
            assert await c.styles() == [] or all(s.kind == "style" for s in await c.styles())
            with pytest.raises(ProblemError) as info:
                await c.explain(cat_png, "nope")
            assert info.value.status == 404
            long = await c.submit("deepdream", **LONG)
            assert (await long.cancel()).status in ("canceled", "queued", "running")
            assert (await long.wait(timeout=15)).status == "canceled"

    asyncio.run(run())
