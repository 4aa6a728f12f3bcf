"""One training loop for the networks that are trained once and then applied inline.

Fast style transfer and the triplet-loss embedding head differ only in their network, what one
batch's loss is, what they measure now and then, and what picture a preview shows; a
:class:`Trainer` subclass states those four things and this base does the rest: Adam, progress,
previews, evaluation every N steps, cancellation between two steps, and checkpoints.

Resuming is exact. Every step draws its randomness from a generator seeded by ``(seed, step)``,
not from a stream that depends on what ran before, and a checkpoint holds the network, Adam's
moments and the histories; so a run stopped at step *k* and resumed from its checkpoint takes
the same batches and reaches the same weights as a run that was never stopped.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cnnviz.synthesis.loop import Callbacks, Cancelled

from .checkpoint import CheckpointError, load_module, load_optimizer, module_tensors, optimizer_tensors, pack, unpack

log = logging.getLogger(__name__)

CheckpointFn = Callable[[int, bytes], None]
MetricsFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainCallbacks(Callbacks):
    """The synthesis callbacks (progress, preview, cancel) plus checkpoints and evaluations.

    ``checkpoint(step, blob)`` receives safetensors bytes every ``checkpoint_every`` steps, when
    the run is cancelled (so a resume loses nothing) and at the end (so a finished run can be
    continued for more steps). ``metrics(step, values)`` hears every evaluation.
    """

    checkpoint: CheckpointFn | None = None
    checkpoint_every: int = 0
    metrics: MetricsFn | None = None


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step: a function of (seed, step) only, so a resumed run draws the same."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


class Trainer(ABC):
    """A network, its Adam optimizer, and the histories of one training run."""

    kind: ClassVar[str]

    def __init__(self, net: nn.Module, *, lr: float, weight_decay: float = 0.0, seed: int = 0,
                 eval_every: int = 0) -> None:
        self.net = net
        self.opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr,
                                    weight_decay=weight_decay)
        self.seed = int(seed)
        self.eval_every = int(eval_every)
        self.step = 0
        self.losses: list[float] = []  # the minimized total, per step
        self.parts: dict[str, list[float]] = {}  # each weighted term's unweighted value, per step
        self.evals: list[dict[str, float]] = []  # {"step": s, ...} every eval_every steps
        self.seconds = 0.0

    # --- what a subclass says -------------------------------------------------------------
    @abstractmethod
    def batch_loss(self, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch drawn with ``gen`` (to minimize), and its parts for the history."""

    def evaluate(self) -> dict[str, float]:
        """Measurements of the network as it is now (held-out accuracy, losses on a fixed image)."""
        return {}

    def preview(self) -> torch.Tensor | None:
        """A ``[3,H,W]`` picture of the network's current output, or None."""
        return None

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the network (architecture, backbone, layers): JSON."""

    # --- state ----------------------------------------------------------------------------
    def history(self) -> dict[str, Any]:
        return {"loss": self.losses, "parts": self.parts, "evals": self.evals, "seconds": round(self.seconds, 3)}

    def checkpoint(self) -> bytes:
        """Network, optimizer and histories at the current step, as safetensors bytes."""
        opt_t, opt_meta = optimizer_tensors(self.opt)
        meta = {"kind": self.kind, "step": self.step, "seed": self.seed, "config": self.config(),
                "optimizer": opt_meta, "history": self.history()}
        return pack({**module_tensors(self.net), **opt_t}, meta)

    def restore(self, blob: bytes) -> None:
        """Continue from a :meth:`checkpoint` blob of a run with the same network."""
        tensors, meta = unpack(blob)
        if meta.get("kind") != self.kind:
            raise CheckpointError(f"a {meta.get('kind')!r} checkpoint cannot resume a {self.kind!r} run")
        if meta.get("config", {}).get("network") != self.config().get("network"):
            raise CheckpointError("the checkpoint's network differs from this run's "
                                  f"({meta.get('config', {}).get('network')} vs {self.config().get('network')})")
        load_module(self.net, tensors)
        load_optimizer(self.opt, tensors, meta["optimizer"])
        self.step = int(meta["step"])
        hist = meta.get("history") or {}
        self.losses = list(hist.get("loss") or [])
        self.parts = {k: list(v) for k, v in (hist.get("parts") or {}).items()}
        self.evals = list(hist.get("evals") or [])
        self.seconds = float(hist.get("seconds") or 0.0)
        log.info("%s run resumed at step %d", self.kind, self.step)

    def weights(self, **extra: Any) -> bytes:
        """The trained network alone (no optimizer state), with its config and final metrics."""
        meta = {"kind": self.kind, "step": self.step, "config": self.config(),
                "metrics": self.evals[-1] if self.evals else {}, **extra}
        return pack(module_tensors(self.net), meta)

    # --- the loop -------------------------------------------------------------------------
    def _evaluate(self, cb: TrainCallbacks) -> None:
        self.net.eval()
        with torch.no_grad():
            values = {k: round(float(v), 6) for k, v in self.evaluate().items()}
        self.net.train()
        if values:
            self.evals.append({"step": self.step, **values})
            if cb.metrics is not None:
                cb.metrics(self.step, values)

    def _preview(self, cb: TrainCallbacks) -> None:
        if cb.preview is None:
            return
        self.net.eval()
        with torch.no_grad():
            img = self.preview()
        self.net.train()
        if img is not None:
            cb.preview(self.step, img.detach().clamp(0, 1).cpu())

    def train(self, steps: int, callbacks: TrainCallbacks | None = None, stage: str = "training") -> None:
        """Train until ``self.step == steps`` (from wherever a restore left it)."""
        cb = callbacks or TrainCallbacks()
        if self.step == 0 and self.eval_every and not self.evals:
            self._evaluate(cb)  # the baseline, before any update (once: a run cancelled at step 0 has it)
        self.net.train()
        while self.step < steps:
            if cb.cancel is not None and cb.cancel():
                if cb.checkpoint is not None:
                    cb.checkpoint(self.step, self.checkpoint())
                raise Cancelled(f"canceled at step {self.step} of {steps}; a checkpoint was kept")
            t0 = time.perf_counter()
            loss, parts = self.batch_loss(step_generator(self.seed, self.step))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            self.seconds += time.perf_counter() - t0
            value = float(loss.detach())
            self.losses.append(round(value, 6))
            for k, v in parts.items():
                self.parts.setdefault(k, []).append(round(float(v), 6))
            if self.eval_every and (self.step % self.eval_every == 0 or self.step == steps):
                self._evaluate(cb)
            if cb.progress is not None:
                cb.progress(self.step, steps, stage, value)
            if cb.preview_every and self.step % cb.preview_every == 0:
                self._preview(cb)
            if cb.checkpoint is not None and cb.checkpoint_every and self.step % cb.checkpoint_every == 0 \
                    and self.step < steps:
                cb.checkpoint(self.step, self.checkpoint())
        self.net.eval()
        if cb.checkpoint is not None:
            cb.checkpoint(self.step, self.checkpoint())
