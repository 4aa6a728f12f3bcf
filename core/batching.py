"""Batching across requests, and the bound on inline computations per process.

Concurrent inline explanations that would run the same computation (model, method, layer,
network input size, method parameters and target kind; only the images and their classes differ)
are gathered for a few milliseconds and run as ONE engine call, the way Triton and TorchServe
batch model inputs. The engine treats the images of a batch independently (eval-mode batch norm,
one gradient of a per-image sum), so each request gets the answer it would have had alone:

- explicit classes (``target``, ``targets``) become per-image index rows of one ``ClassTargets``;
- ``top_k`` requests run with the largest ``k`` of the batch and each keeps its own first ``k``
  (``topk`` is sorted, so the best ``k`` are a prefix of the best ``K``);
- a ``unit`` is part of the key (the same unit for every image).

Methods whose answer for one image depends on the others in the batch (SmoothGrad's noise, RISE's
mask stream, adaptive integrated gradients' batch-wide stopping rule) say so
(:meth:`Method.independent_images`) and are never batched. If a batched call fails, each member
is run alone, so a bad request never fails its neighbours and each gets its own error.

Threads, not asyncio: requests gather in the server's thread pool. The first request of a key
leads: it waits up to ``max_wait_s`` for others (only while some other admitted request has not
computed yet, so a lone request never waits), or until ``max_batch`` images are gathered, then for
one of ``slots`` compute slots, and runs the engine call on a compute lane (``run``, see
core/lanes.py: torch work never runs in the pool's threads). While it waits for a slot its
batch stays open, so under load requests queue in the batcher and coalesce instead of
oversubscribing the cores. Rendering stays per request.

:meth:`ExplainBatcher.admit` bounds the inline requests in compute per process (waiting in the
batcher or computing): past ``max_inflight`` it raises ``Unavailable("inline-busy")`` at once,
with ``Retry-After``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cnnviz.attribution import ClassTargets, EngineError, Explanation, UnitTarget, get_method
from cnnviz.attribution.fast.layer_forward import LayerForward, using_layer_forward
from cnnviz.models import LoadedModel
from core.errors import Unavailable, from_engine
from core.explaining import compute, targets_from
from core.lanes import DIRECT
from core.schemas.explain import ExplainParams

BatchHook = Callable[[int, int], None]
"""Called after each engine call with (requests, images) it served."""


@dataclass
class _Member:
    x: torch.Tensor
    params: ExplainParams
    rows: list[list[int]] | None  # explicit classes per image; None for top_k and units
    k: int | None  # top_k to keep; None for explicit classes and units
    done: threading.Event = field(default_factory=threading.Event)
    result: Explanation | None = None
    error: BaseException | None = None


def _member(model: LoadedModel, x: torch.Tensor, params: ExplainParams) -> _Member:
    targets = targets_from(model, params, x.shape[0])
    if isinstance(targets, ClassTargets) and targets.indices is not None:
        idx = targets.indices
        return _Member(x, params, [list(idx[0 if len(idx) == 1 else i]) for i in range(x.shape[0])], None)
    return _Member(x, params, None, params.top_k if isinstance(targets, ClassTargets) else None)


@dataclass
class _Group:
    key: Hashable
    members: list[_Member] = field(default_factory=list)
    images: int = 0
    closed: bool = False


@dataclass
class BatchStats:
    """Counters since start: engine calls, requests and images they served, largest batch."""

    calls: int = 0
    requests: int = 0
    images: int = 0
    batched_requests: int = 0  # requests that shared their engine call with another
    largest: int = 0
    last_wait_s: float = 0.0  # how long the last leader waited for others (not for a slot)


class Ticket:
    """One admitted request: its engine (pass it to ``run_explanation``) and whether it computed."""

    def __init__(self, batcher: ExplainBatcher) -> None:
        self._batcher = batcher
        self.computed = False

    def engine(self, model: LoadedModel, method: str, x: torch.Tensor, params: ExplainParams) -> Explanation:
        try:
            return self._batcher.compute(model, method, x, params)
        finally:
            self._batcher._computed(self)


class ExplainBatcher:
    """Gathers concurrent inline explanations of the same computation into one engine call.

    ``max_wait_s`` bounds the gathering wait, ``max_batch`` the images of one call (1: no
    batching), ``slots`` the engine calls at once, ``max_inflight`` the admitted requests.
    """

    def __init__(self, max_wait_s: float = 0.005, max_batch: int = 4, slots: int = 1, max_inflight: int = 16,
                 retry_after_s: float = 1.0, on_batch: BatchHook | None = None,
                 run: Callable[..., Any] = DIRECT, layer_forward: LayerForward | None = None) -> None:
        self._lane = run  # where an engine call runs: a compute lane in a server (ComputeLanes.run)
        self._layer_forward = layer_forward  # a compiled road to the CAM layer (core/compiled.py), if any
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_batch = max(1, max_batch)
        self.max_inflight = max(1, max_inflight)
        self.retry_after_s = retry_after_s
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._slots = threading.BoundedSemaphore(max(1, slots))
        self._cond = threading.Condition()
        self._open: dict[Hashable, _Group] = {}
        self._admitted = 0
        self._uncomputed = 0  # admitted requests whose engine step has not finished

    # -- admission -------------------------------------------------------------------------------

    @contextmanager
    def admit(self) -> Iterator[Ticket]:
        """Admit one inline request, or refuse it at once with ``503 inline-busy`` past the bound."""
        with self._cond:
            if self._admitted >= self.max_inflight:
                raise Unavailable("inline-busy", "Too many inline computations in progress",
                                  f"at most {self.max_inflight} at once per process; retry shortly",
                                  retry_after=self.retry_after_s, limit=self.max_inflight)
            self._admitted += 1
            self._uncomputed += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            with self._cond:
                self._admitted -= 1
                if not ticket.computed:
                    self._uncomputed -= 1
                self._cond.notify_all()

    @property
    def admitted(self) -> int:
        return self._admitted

    def _computed(self, ticket: Ticket) -> None:
        with self._cond:
            if not ticket.computed:
                ticket.computed = True
                self._uncomputed -= 1
                self._cond.notify_all()

    # -- batching --------------------------------------------------------------------------------

    def key(self, model: LoadedModel, method: str, x: torch.Tensor, params: ExplainParams) -> Hashable | None:
        """What must be equal for requests to share an engine call; None when this one runs alone."""
        try:
            m = get_method(method)
            typed = params.engine_params(m)
            if not m.independent_images(typed) or params.sweep is not None or not model.classifier:
                return None  # a layer sweep's answer is per layer; a detector's or segmenter's targets per image
            if params.unit is not None:
                u = params.unit
                mode: Hashable = UnitTarget(u.layer, u.channel, u.y, u.x)
            else:
                mode = "classes" if params.targets is not None or params.target is not None else "top_k"
            k = (id(model), method, params.layer, tuple(x.shape[1:]), x.dtype, str(x.device), typed, mode,
                 params.precision)
            hash(k)
        except (EngineError, TypeError, ValueError):
            return None  # an invalid request fails alone, with its own error
        return k

    def compute(self, model: LoadedModel, method: str, x: torch.Tensor, params: ExplainParams) -> Explanation:
        """The engine step of one request, batched with concurrent ones of the same key."""
        key = self.key(model, method, x, params) if self.max_batch > 1 else None
        if key is None:
            with self._slots:
                res = self._lane(compute, model, method, x, params, layer_forward=self._layer_forward)
            self._count(1, x.shape[0])
            return res
        member = _member(model, x, params)  # a bad targets list fails here, alone
        n = x.shape[0]
        with self._cond:
            group = self._open.get(key)
            lead = group is None or group.images + n > self.max_batch
            if lead:
                group = _Group(key)
                self._open[key] = group  # a full group stays with its leader; new arrivals start another
            assert group is not None
            group.members.append(member)
            group.images += n
            self._cond.notify_all()
        if not lead:
            member.done.wait()
            if member.error is not None:
                raise member.error
            assert member.result is not None
            return member.result
        self._lead(model, method, group)
        if member.error is not None:
            raise member.error
        assert member.result is not None
        return member.result

    def _lead(self, model: LoadedModel, method: str, group: _Group) -> None:
        start = time.monotonic()
        deadline = start + self.max_wait_s
        with self._cond:
            # Wait only while another admitted request may still join (it has not computed yet).
            while (group.images < self.max_batch and self._uncomputed > len(group.members)
                   and (left := deadline - time.monotonic()) > 0):
                self._cond.wait(left)
            self.stats.last_wait_s = time.monotonic() - start
        self._slots.acquire()  # the group stays open meanwhile: requests queue here and coalesce
        try:
            with self._cond:
                group.closed = True
                if self._open.get(group.key) is group:
                    del self._open[group.key]
                members = list(group.members)
            self._lane(self._run, model, method, members)
        finally:
            self._slots.release()
            for mb in group.members:
                mb.done.set()

    def _run(self, model: LoadedModel, method: str, members: list[_Member]) -> None:
        images = sum(mb.x.shape[0] for mb in members)
        if len(members) == 1:
            mb = members[0]
            try:
                mb.result = compute(model, method, mb.x, mb.params, layer_forward=self._layer_forward)
            except BaseException as exc:  # noqa: BLE001 - handed to the request's own thread
                mb.error = exc
            self._count(1, images)
            return
        try:
            results = self._batched(model, method, members)
        except Exception:  # noqa: BLE001 - one member's bad input: everyone runs alone, with its own answer
            for mb in members:
                try:
                    mb.result = compute(model, method, mb.x, mb.params, layer_forward=self._layer_forward)
                except BaseException as exc:  # noqa: BLE001
                    mb.error = exc
            self._count(len(members), images, batched=False)
            return
        for mb, res in zip(members, results, strict=True):
            mb.result = res
        self._count(len(members), images)

    def _count(self, requests: int, images: int, batched: bool = True) -> None:
        with self._cond:
            s = self.stats
            s.calls += 1 if batched else requests
            s.requests += requests
            s.images += images
            if batched and requests > 1:
                s.batched_requests += requests
                s.largest = max(s.largest, requests)
        if self.on_batch is not None and batched:
            self.on_batch(requests, images)

    def run_batch(self, model: LoadedModel, method: str,
                  items: list[tuple[torch.Tensor, ExplainParams]]) -> list[Explanation]:
        """ONE engine call for several requests of the same key; each gets its own :class:`Explanation`.

        ``items`` are (normalized batch, params) per request; the params must agree on everything
        but the targets (:meth:`key`).
        """
        return self._batched(model, method, [_member(model, x, p) for x, p in items])

    def _batched(self, model: LoadedModel, method: str, members: list[_Member]) -> list[Explanation]:
        first = members[0].params
        if first.unit is not None:
            targets: ClassTargets | UnitTarget = UnitTarget(first.unit.layer, first.unit.channel, first.unit.y,
                                                            first.unit.x)
        elif members[0].rows is not None:
            targets = ClassTargets(indices=tuple(tuple(r) for mb in members for r in (mb.rows or [])))
        else:
            targets = ClassTargets(top_k=max(mb.k or 1 for mb in members))
        x = torch.cat([mb.x for mb in members])
        m = get_method(method)
        try:
            with using_layer_forward(self._layer_forward):
                res = m.attribute(model, x, targets, first.layer, first.engine_params(m), precision=first.precision)
        except EngineError as exc:
            raise from_engine(exc) from exc
        return split(res, [(mb.x.shape[0], mb.k) for mb in members])


def split(res: Explanation, parts: list[tuple[int, int | None]]) -> list[Explanation]:
    """One batched :class:`Explanation` cut into consecutive parts of (images, top_k to keep or None).

    Per-image lists (maps, targets, scores, probabilities and per-image extras) are sliced; rows
    per target are cut to ``k``; other extras (a window size, a layer name) are shared.
    """
    n = len(res.maps)
    out = []
    start = 0
    for count, k in parts:
        sl = slice(start, start + count)
        start += count

        def cut(rows: list[Any], sl: slice = sl, k: int | None = k) -> list[Any]:
            part = rows[sl]
            return [r[:k] if k is not None and isinstance(r, list) else r for r in part]

        extras = {name: cut(v) if isinstance(v, list) and len(v) == n else v for name, v in res.extras.items()}
        out.append(replace(res, maps=cut(res.maps), targets=cut(res.targets), scores=cut(res.scores),
                           probabilities=cut(res.probabilities), warnings=list(res.warnings), extras=extras))
    return out
