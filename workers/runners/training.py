"""Training jobs: a fast style network or a triplet embedding head, checkpointed and resumable.

The content (or labelled) images come from a stored collection, the style image (and an optional
fixed preview image) from the job's inputs. Checkpoints go to :class:`core.store.trained.TrainedStore`
under the name being trained, every ``checkpoint_every`` steps, on cancel and at the end; they
outlive the job, so a cancelled, failed or timed-out run is resumed by a new job with
``resume: true`` (the API fills in the checkpoint's parameters). On success the trained network
is stored under its name, and replaces an earlier one of that name.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from cnnviz.training import FastStyleTrainer, PairTrainer, TrainCallbacks, Trainer, TripletTrainer, triplet_data
from cnnviz.training.augment import shrink_short_side, to_uint8
from core.imaging import decode_rgb
from core.jobtypes import PLURAL
from core.store.collections import CollectionStore
from core.store.trained import JOB_KINDS, TrainedStore
from workers.runtime import JobContext, execute, png_bytes

log = logging.getLogger(__name__)

class TrainingError(RuntimeError):
    def __init__(self, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.slug, self.detail = slug, detail


def _pick(params: dict[str, Any], fn: Callable[..., Any]) -> dict[str, Any]:
    """The job parameters ``fn`` takes by keyword (its signature is the one list of them), None left out."""
    names = inspect.signature(fn).parameters
    return {k: v for k, v in params.items() if k in names and v is not None}


def _collection(ctx: JobContext, cid: str, short_side: int) -> tuple[list[Any], list[str] | None]:
    """The collection's images as uint8, each shrunk (one at a time) to what training can use."""
    store = CollectionStore(ctx.store.redis, ctx.store.prefix)
    rec = store.get(cid)
    if rec is None:
        raise TrainingError("collection-not-found", f"collection {cid} has expired or was deleted")
    images = [to_uint8(shrink_short_side(decode_rgb(b), short_side)) for b in store.images(cid, int(rec["count"]))]
    return images, rec.get("labels")


def _trainer(ctx: JobContext, job_type: str, params: dict[str, Any], images: dict[str, bytes]) -> Trainer:
    model = ctx.model()
    size = int(params.get("size") or model.preprocessing.input_size)
    content, labels = _collection(ctx, params["collection"], 2 * size)
    if job_type == "fast_style":
        preview = decode_rgb(images["preview"]) if "preview" in images else None
        return FastStyleTrainer(model, decode_rgb(images["style"]), content, preview=preview,
                                **_pick(params, FastStyleTrainer))
    if not labels:
        raise TrainingError("missing-labels", f"a {job_type} needs a collection uploaded with labels")
    data = triplet_data(model, content, labels, progress=lambda d, t, _s: ctx.progress(d, t, "features"),
                        cancel=ctx.cancelled, **_pick(params, triplet_data))
    if job_type == "verification_head":
        return PairTrainer(data, backbone=model.name, **_pick(params, PairTrainer))
    return TripletTrainer(data, backbone=model.name, **_pick(params, TripletTrainer))


def _summary(trainer: Trainer) -> dict[str, Any]:
    last = trainer.evals[-1] if trainer.evals else {}
    out: dict[str, Any] = {"config": trainer.config(), "steps": trainer.step, "seconds": round(trainer.seconds, 3),
                           "metrics": last}
    if isinstance(trainer, PairTrainer):
        out.update(form=trainer.net.form, heldout_accuracy=last.get("heldout_accuracy"),
                   threshold=trainer.threshold, threshold_accuracy=trainer.threshold_accuracy)
    if isinstance(trainer, TripletTrainer):
        out.update(threshold=trainer.threshold, heldout_accuracy=last.get("heldout_accuracy"),
                   frozen_accuracy=trainer.frozen_accuracy, frozen_threshold=trainer.frozen_threshold)
    return out


def run_training(ctx: JobContext) -> None:
    job_type = ctx.spec["type"]
    kind = JOB_KINDS[job_type]
    params: dict[str, Any] = dict(ctx.spec.get("params") or {})
    keep = dict(ctx.spec.get("store") or {})
    owner, name = ctx.record["owner"], params["name"]
    trained = TrainedStore(ctx.store.redis, ctx.store.prefix)
    ckpt = trained.checkpoint(kind, owner, name) if params.get("resume") else None
    if params.get("resume") and ckpt is None:
        raise TrainingError("no-checkpoint", f"no checkpoint of {kind} {name!r} to resume (deleted or expired)")
    if ckpt is not None:
        images = ckpt["images"]
    else:
        inputs = ctx.inputs()
        images = dict(zip(("style", "preview"), inputs, strict=False)) if job_type == "fast_style" else {}
    ctx.progress(0, int(params["steps"]), "starting")
    trainer = _trainer(ctx, job_type, params, images)
    if ckpt is not None:
        trainer.restore(ckpt["blob"])
    start = trainer.step
    ckpt_ttl = int(keep.get("checkpoint_ttl_s") or 86400)

    def save_checkpoint(step: int, blob: bytes) -> None:
        trained.put_checkpoint(kind, owner, name, blob, step=step, params={**params, "resume": False},
                               model=ctx.record.get("model") or "", job=ctx.id, ttl_s=ckpt_ttl, images=images)
        ctx.store.update(ctx.id, checkpoint_step=step)

    callbacks = TrainCallbacks(progress=lambda step, total, stage, loss: ctx.progress(step, total, stage, loss),
                               preview=ctx.preview, preview_every=int(params.get("preview_every") or 0),
                               cancel=ctx.cancelled, checkpoint=save_checkpoint,
                               checkpoint_every=int(params.get("checkpoint_every") or 0), metrics=ctx.metrics)
    try:
        trainer.train(int(params["steps"]), callbacks)
    finally:
        trained.release(kind, owner, name, ctx.id)
    summary = _summary(trainer)
    rec = trained.save(kind, owner, name, trainer.weights(name=name, job=ctx.id), model=trainer.config()["backbone"],
                       job=ctx.id, summary=summary, ttl_s=int(keep.get("ttl_s") or 0))
    result = {"type": job_type, "name": name, "kind": kind, "version": rec["version"], "resumed_from": start,
              "link": f"/v1/{PLURAL[kind]}/{name}", **summary, "history": trainer.history()}
    ctx.put_json("result.json", result)
    main = "result.json"
    picture = trainer.preview()  # the stylized preview image, or the held-out embedding maps
    if picture is not None:
        name = "image.png" if kind == "style" else "map.png"
        ctx.put(name, png_bytes(picture), "image/png")
        main = name if kind == "style" else main
    ctx.progress(trainer.step, trainer.step, "done")
    ctx.succeed(main)


def run(job_id: str, prefix: str) -> dict[str, Any]:
    """rq entry point for ``type: fast_style``, ``type: triplet_head`` and ``type: verification_head``."""
    return execute(job_id, prefix, run_training)
