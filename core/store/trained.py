"""Trained networks (styles, embedding heads) and their training checkpoints, in Redis.

Every worker and API process shares one Redis, so a network trained on one GPU machine is
applied by any API process: the weights travel as safetensors bytes (never a pickle), with the
config that rebuilds them in the blob's own metadata.

=============================================  =====================================================
``{p}:trained:{kind}:{owner}:{name}``          hash: name, kind, version, model, job, bytes, times, summary
``{p}:trained:{kind}:{owner}:{name}:weights``  blob: the network's safetensors
``{p}:trained:{kind}:{owner}:{name}:ckpt``     hash: checkpoint safetensors, job params, step, style PNG
``{p}:trained:{kind}:{owner}:{name}:lock``     the id of the job training this name now
``{p}:owner:{o}:trained:{kind}``               set: the owner's names of this kind (listing)
=============================================  =====================================================

``kind`` is ``style``, ``embedder`` or ``verifier``. Names belong to an API key (its hash): two keys may each
have a style called ``mosaic``. A checkpoint outlives a cancelled or failed run, so the run can
be resumed; it is kept until the name is deleted or its TTL runs out.

A name with a checkpoint but no finished network (its run was cancelled, failed, its worker died,
or it is still training) is ``status: partial``: it is listed, and :meth:`TrainedStore.load`
builds it from the checkpoint's weights, so ``apply`` (or an embedder's use) works on what the run
made so far. A finished network is ``status: ready`` and wins over a later checkpoint of its name.

API processes keep the networks they built in a small LRU keyed by the record's ``version``, so an
``apply`` costs one ``HGET`` and a forward pass; retraining a name changes its version and the
next request rebuilds it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from torch import nn

from cnnviz.models import LoadedModel
from cnnviz.training import load_head, load_transform_net, load_verifier, unpack
from cnnviz.training.checkpoint import read_meta
from core.errors import Conflict, Invalid, NotFound

log = logging.getLogger(__name__)

KINDS = ("style", "embedder", "verifier")
JOB_KINDS = {"fast_style": "style", "triplet_head": "embedder", "verification_head": "verifier"}  # job type -> kind
BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, Any], str], nn.Module]] = {
    "style": lambda tensors, meta, device: load_transform_net(tensors, meta["config"], device),
    "embedder": lambda tensors, meta, device: load_head(tensors, meta["config"]).to(device),
    "verifier": lambda tensors, meta, device: load_verifier(tensors, meta["config"]).to(device),
}
CACHE_SIZE = 16
_cache: OrderedDict[tuple[str, ...], tuple[str, nn.Module, dict[str, Any]]] = OrderedDict()
_cache_lock = threading.Lock()


class TrainedStore:
    def __init__(self, redis: Redis, prefix: str = "cnnviz") -> None:
        self.redis = redis
        self.prefix = prefix

    # --- keys -----------------------------------------------------------------------------
    def key(self, kind: str, owner: str, name: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        return f"{self.prefix}:trained:{kind}:{owner}:{name}"

    def names_key(self, kind: str, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:trained:{kind}"

    # --- trained networks -----------------------------------------------------------------
    def save(self, kind: str, owner: str, name: str, weights: bytes, *, model: str, job: str,
             summary: dict[str, Any], ttl_s: int = 0) -> dict[str, Any]:
        """Store (or replace) a trained network; ``ttl_s`` 0 keeps it until deleted."""
        key = self.key(kind, owner, name)
        now = time.time()
        created = self.redis.hget(key, "created_at")
        rec = {"name": name, "kind": kind, "version": uuid.uuid4().hex, "model": model, "job": job,
               "bytes": len(weights), "created_at": float(created) if created else now, "updated_at": now,
               "summary": summary, "status": "ready", "step": int(summary.get("steps") or 0)}
        with self.redis.pipeline(transaction=True) as p:
            p.set(key + ":weights", weights)
            p.delete(key)
            p.hset(key, mapping={k: json.dumps(v) for k, v in rec.items()})
            p.sadd(self.names_key(kind, owner), name)
            if ttl_s:
                p.expire(key, ttl_s)
                p.expire(key + ":weights", ttl_s)
            p.execute()
        log.info("stored %s %r for %s (%d bytes)", kind, name, owner[:8], len(weights))
        return rec

    def get(self, kind: str, owner: str, name: str) -> dict[str, Any] | None:
        """The finished network's record (``status: ready``), else the record of its checkpoint
        (``status: partial``), else None."""
        raw = self.redis.hgetall(self.key(kind, owner, name))
        if not raw:
            return self._partial(kind, owner, name)
        rec = {k.decode(): json.loads(v) for k, v in raw.items()}
        rec.setdefault("status", "ready")
        rec.setdefault("step", int((rec.get("summary") or {}).get("steps") or 0))
        return rec

    def _partial(self, kind: str, owner: str, name: str) -> dict[str, Any] | None:
        """A record for a name that has only a checkpoint: what its run made so far."""
        key = self.key(kind, owner, name) + ":ckpt"
        step, job, updated, created, config, size = self.redis.hmget(
            key, ["step", "job", "updated_at", "created_at", "config", "bytes"])
        if step is None:
            return None
        cfg = json.loads(config) if config else {}
        updated_at = float(updated or 0)
        return {"name": name, "kind": kind, "version": f"ckpt-{job.decode()}-{int(step)}-{updated_at:.6f}",
                "model": cfg.get("backbone") or "", "job": job.decode(), "bytes": int(size or 0),
                "created_at": float(created or updated_at), "updated_at": updated_at,
                "summary": {"config": cfg, "steps": int(step)} if cfg else {"steps": int(step)},
                "status": "partial", "step": int(step)}

    def list(self, kind: str, owner: str) -> list[dict[str, Any]]:
        """The owner's networks of ``kind``, newest first; names whose record expired are dropped."""
        names = sorted(n.decode() for n in self.redis.smembers(self.names_key(kind, owner)))
        out, gone = [], []
        for name in names:
            rec = self.get(kind, owner, name)
            if rec is None:
                gone.append(name)
            else:
                out.append(rec)
        if gone:
            self.redis.srem(self.names_key(kind, owner), *gone)
        return sorted(out, key=lambda r: -r["updated_at"])

    def count(self, kind: str, owner: str) -> int:
        return int(self.redis.scard(self.names_key(kind, owner)))

    def weights(self, kind: str, owner: str, name: str) -> bytes | None:
        return self.redis.get(self.key(kind, owner, name) + ":weights")

    def delete(self, kind: str, owner: str, name: str) -> bool:
        """Remove a network, its checkpoint and its lock; True if there was anything to remove."""
        key = self.key(kind, owner, name)
        with self.redis.pipeline(transaction=True) as p:
            p.delete(key, key + ":weights", key + ":ckpt", key + ":lock")
            p.srem(self.names_key(kind, owner), name)
            removed = p.execute()[0]
        return bool(removed)

    def load(self, kind: str, owner: str, name: str, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]] | None:
        """The network on ``device`` (built once per version and cached) and its record, or None."""
        key = self.key(kind, owner, name)
        raw_version = self.redis.hget(key, "version")
        if raw_version is None:
            return self._load_partial(kind, owner, name, device)
        version = json.loads(raw_version)
        ck = (self.prefix, kind, owner, name, str(device))
        with _cache_lock:
            hit = _cache.get(ck)
            if hit is not None and hit[0] == version:
                _cache.move_to_end(ck)
                return hit[1], hit[2]
        blob, rec = self.weights(kind, owner, name), self.get(kind, owner, name)
        if blob is None or rec is None:
            return None
        return self._build(ck, kind, blob, rec, device)

    def _load_partial(self, kind: str, owner: str, name: str, device: str) -> tuple[nn.Module, dict[str, Any]] | None:
        """The network of a name's checkpoint (its ``net.`` tensors; the optimizer state is left out)."""
        rec = self._partial(kind, owner, name)
        if rec is None:
            return None
        ck = (self.prefix, kind, owner, name, str(device))
        with _cache_lock:
            hit = _cache.get(ck)
            if hit is not None and hit[0] == rec["version"]:
                _cache.move_to_end(ck)
                return hit[1], hit[2]
        blob = self.redis.hget(self.key(kind, owner, name) + ":ckpt", "blob")
        if blob is None:
            return None
        return self._build(ck, kind, blob, rec, device)

    @staticmethod
    def _build(ck: tuple[str, ...], kind: str, blob: bytes, rec: dict[str, Any],
               device: str) -> tuple[nn.Module, dict[str, Any]]:
        tensors, meta = unpack(blob)
        net = BUILDERS[kind](tensors, meta, str(device))
        rec["meta"] = meta
        with _cache_lock:
            _cache[ck] = (rec["version"], net, rec)
            _cache.move_to_end(ck)
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        return net, rec

    # --- checkpoints ----------------------------------------------------------------------
    def put_checkpoint(self, kind: str, owner: str, name: str, blob: bytes, *, step: int, params: dict[str, Any],
                       model: str, job: str, ttl_s: int, images: dict[str, bytes] | None = None) -> None:
        """Keep the training state of ``name``; ``images`` (style, preview PNGs) are what a resume re-reads."""
        key = self.key(kind, owner, name) + ":ckpt"
        now = time.time()
        fields: dict[str, Any] = {"blob": blob, "step": step, "params": json.dumps(params), "model": model,
                                  "job": job, "updated_at": now, "bytes": len(blob),
                                  "config": json.dumps(read_meta(blob).get("config") or {})}
        fields.update({f"image:{k}": v for k, v in (images or {}).items()})
        with self.redis.pipeline(transaction=True) as p:
            p.hset(key, mapping=fields)
            p.hsetnx(key, "created_at", now)
            p.expire(key, ttl_s)
            p.sadd(self.names_key(kind, owner), name)  # listed (as partial) before its run finishes
            p.execute()

    def checkpoint(self, kind: str, owner: str, name: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.key(kind, owner, name) + ":ckpt")
        if not raw:
            return None
        rec = {k.decode(): v for k, v in raw.items()}
        images = {k[len("image:"):]: v for k, v in rec.items() if k.startswith("image:")}
        return {"blob": rec["blob"], "images": images, "step": int(rec["step"]),
                "params": json.loads(rec["params"]), "model": rec["model"].decode(), "job": rec["job"].decode(),
                "updated_at": float(rec["updated_at"])}

    def checkpoint_info(self, kind: str, owner: str, name: str) -> dict[str, Any] | None:
        """The checkpoint's step, params and model, without its (large) blob."""
        key = self.key(kind, owner, name) + ":ckpt"
        step, params, model, job = self.redis.hmget(key, ["step", "params", "model", "job"])
        if step is None:
            return None
        return {"step": int(step), "params": json.loads(params), "model": model.decode(), "job": job.decode()}

    # --- who is training a name -----------------------------------------------------------
    def lock_key(self, kind: str, owner: str, name: str) -> str:
        return self.key(kind, owner, name) + ":lock"

    def trainer_of(self, kind: str, owner: str, name: str) -> str | None:
        v = self.redis.get(self.lock_key(kind, owner, name))
        return v.decode() if v else None

    def claim(self, kind: str, owner: str, name: str, holder: str, ttl_s: int, replace: bool = False) -> bool:
        """Mark ``holder`` as training ``name``; only over an absent holder unless ``replace``."""
        return bool(self.redis.set(self.lock_key(kind, owner, name), holder, ex=ttl_s, nx=not replace))

    def release(self, kind: str, owner: str, name: str, holder: str) -> None:
        key = self.lock_key(kind, owner, name)
        if self.trainer_of(kind, owner, name) == holder:
            self.redis.delete(key)


@dataclass
class TrainingLock:
    """One training run per trained name at a time: claimed before queueing, bound to the job after."""

    store: TrainedStore
    kind: str
    owner: str
    name: str
    is_active_job: Callable[[str], bool]
    holder: str = field(default_factory=lambda: f"pending-{time.time_ns()}")

    def claim(self) -> None:
        if self.store.claim(self.kind, self.owner, self.name, self.holder, 60):
            return
        current = self.store.trainer_of(self.kind, self.owner, self.name) or ""
        if current.startswith("pending") or self.is_active_job(current):
            raise Conflict("training-in-progress", f"{self.kind} {self.name!r} is being trained by another job",
                           job=None if current.startswith("pending") else current, retry_after=10)
        self.store.claim(self.kind, self.owner, self.name, self.holder, 60, replace=True)

    def bind(self, job_id: str, ttl_s: int) -> None:
        self.store.claim(self.kind, self.owner, self.name, job_id, ttl_s, replace=True)

    def release(self) -> None:
        self.store.release(self.kind, self.owner, self.name, self.holder)


def load_embedder(store: TrainedStore, owner: str, name: str, model: LoadedModel,
                  device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A caller's trained embedding head for ``model``: 404 when unknown, 422 when trained on another model."""
    found = store.load("embedder", owner, name, device)
    if found is None:
        raise NotFound("embedder-not-found", f"No embedder named {name!r}", "Train one with a triplet_head job.")
    net, rec = found
    backbone = rec["meta"]["config"].get("backbone")
    if backbone != model.name:
        raise Invalid("head-model-mismatch", f"Embedder {name!r} was trained on {backbone!r}, not {model.name!r}",
                      model=backbone)
    return net, rec


def load_verification_head(store: TrainedStore, owner: str, name: str, model: LoadedModel,
                           device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A caller's trained verification head for ``model``: 404 when unknown, 422 when trained on another model."""
    found = store.load("verifier", owner, name, device)
    if found is None:
        raise NotFound("verifier-not-found", f"No verifier named {name!r}", "Train one with a verification_head job.")
    net, rec = found
    backbone = rec["meta"]["config"].get("backbone")
    if backbone != model.name:
        raise Invalid("verifier-model-mismatch", f"Verifier {name!r} was trained on {backbone!r}, not "
                      f"{model.name!r}", model=backbone)
    return net, rec
