"""Image collections in Redis: uploaded once, used by many collection-view jobs.

==============================  ========================================================
``{p}:col:{id}``                hash: owner hash, count, labels (JSON), created_at
``{p}:col:{id}:img:{i}``        blob: the i-th image (PNG of the decoded RGB), with the TTL
``{p}:col:{id}:emb:{m}:{l}``    blob: float32 embeddings of model m, layer l (a gallery)
==============================  ========================================================

The API writes (it validated and decoded every image); workers read. Both sides share this
layout through this module, so the service never needs to know key names.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np
import torch
from redis import Redis


def gallery_key(layer: str, size: int, *, pool: str = "avg", head: str | None = None,
                version: str | None = None) -> str:
    """What a gallery's cached embeddings are filed under: the layer and input size, or the trained
    head and its version (a retrained head gets a new key). Enroll jobs write it, identify reads it."""
    if head is not None:
        return f"head:{head}:{version}@{size}"
    return f"{layer}@{size}" + ("" if pool == "avg" else f":{pool}")


class CollectionStore:
    def __init__(self, redis: Redis, prefix: str = "cnnviz") -> None:
        self.redis = redis
        self.prefix = prefix

    def key(self, cid: str) -> str:
        return f"{self.prefix}:col:{cid}"

    def image_key(self, cid: str, i: int) -> str:
        return f"{self.prefix}:col:{cid}:img:{i}"

    def create(self, owner: str, images: list[bytes], labels: list[str] | None, ttl_s: int, *,
               boxes: list[list[tuple[int, int, int, int]]] | None = None,
               sizes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
        """Store a collection. ``boxes`` per image are in original pixels; ``sizes`` the originals'
        (height, width), the frame of those boxes (stored images may have been decoded smaller)."""
        cid = uuid.uuid4().hex
        rec = {"id": cid, "owner": owner, "count": len(images), "labels": labels, "created_at": time.time(),
               "ttl_s": ttl_s, "bytes": sum(len(b) for b in images)}
        if boxes is not None:
            rec.update(boxes=[[list(b) for b in row] for row in boxes], sizes=[list(s) for s in sizes or []])
        with self.redis.pipeline(transaction=True) as p:
            p.hset(self.key(cid), mapping={k: json.dumps(v) for k, v in rec.items()})
            p.expire(self.key(cid), ttl_s)
            for i, blob in enumerate(images):
                p.set(self.image_key(cid, i), blob, ex=ttl_s)
            p.execute()
        return rec

    def get(self, cid: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.key(cid))
        if not raw:
            return None
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def images(self, cid: str, count: int) -> list[bytes]:
        blobs = self.redis.mget([self.image_key(cid, i) for i in range(count)]) if count else []
        if any(b is None for b in blobs):
            raise RuntimeError(f"collection {cid} has expired")
        return list(blobs)

    def embeddings_key(self, cid: str, model: str, layer: str) -> str:
        return f"{self.prefix}:col:{cid}:emb:{model}:{layer}"

    def put_embeddings(self, cid: str, model: str, layer: str, e: torch.Tensor) -> None:
        """Cache a gallery's embeddings ``[N,D]`` for as long as the collection lives."""
        ttl = max(1, int(self.redis.ttl(self.key(cid))))
        header = np.array(e.shape, dtype=np.int64).tobytes()
        self.redis.set(self.embeddings_key(cid, model, layer), header + e.float().numpy().tobytes(), ex=ttl)

    def get_embeddings(self, cid: str, model: str, layer: str) -> torch.Tensor | None:
        blob = self.redis.get(self.embeddings_key(cid, model, layer))
        if blob is None:
            return None
        n, d = np.frombuffer(blob[:16], dtype=np.int64)
        return torch.from_numpy(np.frombuffer(blob[16:], dtype=np.float32).reshape(int(n), int(d)).copy())

    def delete(self, cid: str, count: int) -> None:
        keys = [self.key(cid), *[self.image_key(cid, i) for i in range(count)]]
        keys += list(self.redis.scan_iter(match=f"{self.prefix}:col:{cid}:emb:*", count=100))
        self.redis.delete(*keys)
