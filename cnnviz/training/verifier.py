"""A learned verification head: a logistic unit on two embeddings' element-wise difference.

The two ways a face-verification course teaches to decide "same or not" from embeddings are a
distance threshold (:mod:`cnnviz.inspection.verification`) and a learned logistic unit (Taigman
et al. 2014, DeepFace; Schroff et al. 2015 name it beside the threshold):

- ``abs``:  ``y = sigmoid(sum_k w_k |f_i,k - f_j,k| + b)``
- ``chi2``: ``y = sigmoid(sum_k w_k (f_i,k - f_j,k)^2 / (f_i,k + f_j,k) + b)``

``f`` is the embedding the verify and identify endpoints use (a layer's pooled features scaled to
unit length). The chi-square form divides by ``f_i + f_j``, which is meant for non-negative
features (a layer after a ReLU, as every default layer here); the denominator is taken as
``|f_i| + |f_j|`` (equal to the textbook one there) plus a small epsilon, so a coordinate that
is zero in both embeddings adds nothing instead of dividing by zero.

Training uses the same data as the triplet head (:func:`cnnviz.training.triplet.triplet_data`:
the frozen features of augmented views, split into training and held-out images or views).
Each step draws a balanced batch of same-class and different-class training pairs and takes one
Adam step on the binary cross-entropy. The held-out accuracy is the balanced accuracy (the mean
of the accuracies on same and on different pairs, as the threshold's) of ``y >= 0.5`` on the
held-out pairs, reported beside the distance threshold calibrated on the training pairs and read
on the very same held-out pairs.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.errors import EngineError
from cnnviz.inspection.verification import calibrate_threshold

from .checkpoint import load_module
from .loop import Trainer
from .triplet import TripletData

log = logging.getLogger(__name__)

PairForm = Literal["abs", "chi2"]
PAIR_FORMS: tuple[str, ...] = ("abs", "chi2")
CHI2_EPS = 1e-6
MAX_EVAL_PAIRS = 20_000  # held-out pairs scored per evaluation (a fixed sample beyond that)


def pair_features(a: torch.Tensor, b: torch.Tensor, form: str) -> torch.Tensor:
    """The per-coordinate term the logistic unit weights: ``|a - b|`` or ``(a - b)^2 / (|a| + |b|)``."""
    if form == "abs":
        return (a - b).abs()
    if form == "chi2":
        return (a - b).pow(2) / (a.abs() + b.abs() + CHI2_EPS)
    raise EngineError("bad-params", f"unknown pair form {form!r}; expected one of {PAIR_FORMS}")


class VerificationHead(nn.Module):
    """``sigmoid(w . pair_features(f_i, f_j) + b)``: one weight per embedding coordinate and a bias."""

    def __init__(self, dim: int, form: str = "abs") -> None:
        super().__init__()
        if form not in PAIR_FORMS:
            raise EngineError("bad-params", f"unknown pair form {form!r}; expected one of {PAIR_FORMS}")
        self.dim, self.form = int(dim), str(form)
        self.linear = nn.Linear(self.dim, 1)
        nn.init.zeros_(self.linear.weight)  # p = 0.5 for every pair before training
        nn.init.zeros_(self.linear.bias)

    def config(self) -> dict[str, Any]:
        return {"arch": "verification_head", "dim": self.dim, "form": self.form}

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits ``[N]`` of "same" for embedding pairs ``a``, ``b`` ``[N, D]`` (broadcast)."""
        return self.linear(pair_features(a.float(), b.float(), self.form))[..., 0]

    def probability(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(a, b))


def _pairs(labels: torch.Tensor, limit: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair ``i < j`` of ``labels`` (a fixed random sample of ``limit`` when there are more): (i, j, same)."""
    n = labels.numel()
    iu = torch.triu_indices(n, n, 1)
    if iu.shape[1] > limit:
        iu = iu[:, torch.randperm(iu.shape[1], generator=gen)[:limit]]
    return iu[0], iu[1], labels[iu[0]] == labels[iu[1]]


def balanced_accuracy(decided_same: torch.Tensor, same: torch.Tensor) -> float:
    """The mean of the accuracies on same pairs and on different pairs (those present)."""
    right = decided_same == same
    parts = [right[m].float().mean() for m in (same, ~same) if m.any()]
    return float(sum(parts) / len(parts)) if parts else 0.0


class PairTrainer(Trainer):
    """Train a :class:`VerificationHead` on pairs of :class:`TripletData`'s training features."""

    kind = "verification_head"

    def __init__(self, data: TripletData, *, backbone: str, form: str = "abs", pairs_per_batch: int = 64,
                 lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0, eval_every: int = 50) -> None:
        if data.heldout.shape[0] < 2:
            raise EngineError("bad-params", "the held-out part has fewer than two views")
        torch.manual_seed(seed)
        head = VerificationHead(data.train.shape[1], form)
        super().__init__(head, lr=lr, weight_decay=weight_decay, seed=seed, eval_every=eval_every)
        self.data, self.backbone = data, backbone
        self.pairs_per_batch = int(pairs_per_batch)
        self.train_e = F.normalize(data.train, dim=1)  # the embeddings verify and identify compare
        self.held_e = F.normalize(data.heldout, dim=1)
        self.by_class = [torch.nonzero(data.train_labels == c).flatten() for c in range(len(data.classes))]
        self.pairable = [c for c, idx in enumerate(self.by_class) if idx.numel() >= 2]
        if not self.pairable:
            raise EngineError("bad-params", "no class has two training views: no same pair to learn from")
        gen = torch.Generator().manual_seed(int(seed))
        self.eval_pairs = _pairs(data.heldout_labels, MAX_EVAL_PAIRS, gen)
        self.threshold, self.threshold_accuracy = self._threshold_baseline()

    def _threshold_baseline(self) -> tuple[float, float]:
        """The distance threshold calibrated on the training pairs, its balanced accuracy on our held-out pairs."""
        threshold = calibrate_threshold(self.train_e, self.data.train_labels.tolist(), balanced=True).threshold
        i, j, same = self.eval_pairs
        d = (self.held_e[i] - self.held_e[j]).norm(dim=1)
        return threshold, balanced_accuracy(d < threshold, same)

    def config(self) -> dict[str, Any]:
        return {"network": self.net.config(), "backbone": self.backbone, "layer": self.data.layer,
                "size": self.data.size, "pool": "avg", "classes": self.data.classes, "split": self.data.split,
                "pairs_per_batch": self.pairs_per_batch}

    def batch_loss(self, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        half = max(1, self.pairs_per_batch // 2)
        n = self.train_e.shape[0]
        # same pairs: a class with two views, then two distinct members of it
        cls = torch.tensor(self.pairable)[torch.randint(0, len(self.pairable), (half,), generator=gen)]
        a_s, b_s = [], []
        for c in cls.tolist():
            members = self.by_class[c]
            two = members[torch.randperm(members.numel(), generator=gen)[:2]]
            a_s.append(two[0])
            b_s.append(two[1])
        # different pairs: random pairs, redrawn until their classes differ (at least two classes exist)
        a_d = torch.randint(0, n, (half,), generator=gen)
        b_d = torch.randint(0, n, (half,), generator=gen)
        clash = self.data.train_labels[a_d] == self.data.train_labels[b_d]
        while clash.any():
            b_d[clash] = torch.randint(0, n, (int(clash.sum()),), generator=gen)
            clash = self.data.train_labels[a_d] == self.data.train_labels[b_d]
        a = torch.cat([torch.stack(a_s), a_d])
        b = torch.cat([torch.stack(b_s), b_d])
        y = torch.cat([torch.ones(half), torch.zeros(half)])
        logits = self.net(self.train_e[a], self.train_e[b])
        loss = F.binary_cross_entropy_with_logits(logits, y)
        return loss, {"train_accuracy": float(((logits > 0).float() == y).float().mean())}

    def evaluate(self) -> dict[str, float]:
        i, j, same = self.eval_pairs
        p = self.net.probability(self.held_e[i], self.held_e[j])
        return {"heldout_accuracy": balanced_accuracy(p >= 0.5, same),
                "threshold_accuracy": self.threshold_accuracy, "threshold": self.threshold}


def load_verifier(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> VerificationHead:
    """Rebuild a trained verification head from its safetensors tensors and stored config."""
    spec = config.get("network") or {}
    if spec.get("arch") != "verification_head":
        raise EngineError("bad-weights", f"not a verification head: {spec}")
    head = VerificationHead(int(spec["dim"]), str(spec["form"]))
    load_module(head, tensors)
    for p in head.parameters():
        p.requires_grad_(False)
    return head.eval()


def estimate_cost(model: Any, *, steps: int = 300, views: int = 4, size: int | None = None, n_images: int = 1,
                  pairs_per_batch: int = 64, **_: object) -> float:
    """Backbone passes: one forward (a third of a pass) per view at ``size``; the logistic unit's steps
    are nearly free beside them (one multiply-add per coordinate and pair)."""
    area = ((size or model.spec.input_size) / model.spec.input_size) ** 2
    return float(n_images) * (views + 1) * area / 3.0 + steps * pairs_per_batch * 1e-5
