"""Embeddings, pair verification, 1:K identification against a gallery, and threshold calibration.

An embedding is a layer's pooled feature vector scaled to unit length, so the Euclidean distance
between two embeddings lies in [0, 2] and is a monotone function of their cosine
(``d^2 = 2 - 2 cos``); one threshold then means the same thing for every pair. Verification says
"same" when the distance is *under* the threshold; identification answers the nearest enrolled
label when its distance is under the threshold and ``"unknown"`` otherwise (an open-set answer,
as FaceNet-style systems do). The threshold is calibrated on a labelled collection as the cut that
classifies the most pairs right.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..models import LoadedModel
from .features import CancelFn, Pool, ProgressFn, extract_features
from .neighbours import Metric, distance_matrix

log = logging.getLogger(__name__)

UNKNOWN = "unknown"

__all__ = ["Calibration", "Gallery", "Identification", "UNKNOWN", "calibrate_threshold", "distance", "embed",
           "pair_accuracy", "verify"]


def embed(model: LoadedModel, images: Sequence[torch.Tensor], layer: str | None = None, pool: Pool | str = "avg",
          *, size: int | None = None, batch_size: int | None = None, progress: ProgressFn | None = None,
          cancel: CancelFn | None = None) -> torch.Tensor:
    """L2-normalized embeddings ``[N,D]`` of images ``[3,H,W]`` in [0,1] from ``layer`` (default: the model's)."""
    feats = extract_features(model, images, layer, batch_size=batch_size, pool=pool, size=size, progress=progress,
                             cancel=cancel)
    return F.normalize(feats, dim=1)


def distance(a: torch.Tensor, b: torch.Tensor, metric: Metric | str = "euclidean") -> torch.Tensor:
    """Row-wise distance of ``a`` and ``b`` (``[D]`` or ``[N,D]``, broadcast): a scalar or ``[N]``."""
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)
    if metric == "euclidean":
        return (a.float() - b.float()).norm(dim=-1)
    raise ValueError(f"unknown metric {metric!r}; expected cosine or euclidean")


def verify(e1: torch.Tensor, e2: torch.Tensor, threshold: float,
           metric: Metric | str = "euclidean") -> tuple[float, bool]:
    """``(distance, same)`` for two embeddings ``[D]``: same when the distance is under ``threshold``."""
    d = float(distance(e1, e2, metric))
    return d, d < threshold


class Identification(NamedTuple):
    """The answer of a 1:K search: a label or ``"unknown"``, its distance, and the nearest labels."""

    label: str
    distance: float
    candidates: list[tuple[str, float]]  # (label, distance), nearest first, one entry per label


@dataclass
class Gallery:
    """Enrolled identities: one or more L2-normalized embeddings per label."""

    labels: list[str] = field(default_factory=list)
    embeddings: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))

    def __len__(self) -> int:
        return len(self.labels)

    def enroll(self, labels: Sequence[str], embeddings: torch.Tensor) -> None:
        """Add ``embeddings`` ``[K,D]`` under ``labels`` (normalized here, so raw features are fine too)."""
        if embeddings.dim() == 1:
            embeddings = embeddings[None]
        if len(labels) != embeddings.shape[0]:
            raise ValueError(f"{len(labels)} labels for {embeddings.shape[0]} embeddings")
        e = F.normalize(embeddings.detach().float().cpu(), dim=1)
        if len(self.labels) and e.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embedding size {e.shape[1]} differs from the gallery's {self.embeddings.shape[1]}")
        self.embeddings = e if not len(self.labels) else torch.cat([self.embeddings, e])
        self.labels.extend(str(lb) for lb in labels)

    def identify(self, e: torch.Tensor, threshold: float, k: int = 5,
                 metric: Metric | str = "euclidean") -> Identification:
        """The nearest enrolled label if its distance is under ``threshold``, else ``"unknown"``.

        Candidates rank labels by their closest enrolled embedding (a label enrolled several times
        appears once).
        """
        if not len(self.labels):
            return Identification(UNKNOWN, float("inf"), [])
        d = distance_matrix(F.normalize(e.detach().float().cpu().reshape(1, -1), dim=1), self.embeddings, metric)[0]
        order = d.argsort(stable=True).tolist()
        candidates: list[tuple[str, float]] = []
        seen: set[str] = set()
        for i in order:
            if self.labels[i] in seen:
                continue
            seen.add(self.labels[i])
            candidates.append((self.labels[i], float(d[i])))
            if len(candidates) >= k:
                break
        best_label, best = candidates[0]
        return Identification(best_label if best < threshold else UNKNOWN, best, candidates)


class Calibration(NamedTuple):
    """The distance threshold that best separates same from different pairs, and how well it does."""

    threshold: float
    accuracy: float
    n_same_pairs: int
    n_diff_pairs: int


def calibrate_threshold(embeddings: torch.Tensor, labels: Sequence[str | int], metric: Metric | str = "euclidean",
                        balanced: bool = False) -> Calibration:
    """The threshold maximizing pair accuracy over all ``N(N-1)/2`` pairs of a labelled collection.

    Distances of all pairs are sorted once; the number of pairs classified right by a cut after
    the ``t``-th smallest distance is (same pairs among the first ``t``) + (different pairs after
    it), read off two cumulative sums, so the search is ``O(P log P)``. Cuts fall only between
    distinct distances, at their midpoint ("same" means strictly under the threshold). With
    ``balanced`` the cut maximizes the mean of the same-pair and different-pair accuracies instead
    (useful when different pairs vastly outnumber same ones), and ``accuracy`` reports that mean.
    """
    n = embeddings.shape[0]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} embeddings")
    if n < 2:
        raise ValueError("calibration needs at least two embeddings")
    ids = {lb: i for i, lb in enumerate(dict.fromkeys(labels))}
    lab = torch.tensor([ids[lb] for lb in labels])
    iu = torch.triu_indices(n, n, 1)
    d = distance_matrix(embeddings, embeddings, metric).double()[iu[0], iu[1]]
    same = (lab[iu[0]] == lab[iu[1]])
    n_same = int(same.sum())
    n_diff = int(same.numel() - n_same)
    d, order = d.sort()
    same = same[order].double()
    # correct(t) for a cut after the first t pairs (t = 0..P): same in [0,t) + different in [t,P)
    same_below = torch.cat([torch.zeros(1, dtype=torch.float64), same.cumsum(0)])
    diff_below = torch.cat([torch.zeros(1, dtype=torch.float64), (1 - same).cumsum(0)])
    diff_above = n_diff - diff_below
    if balanced:
        score = 0.5 * (same_below / max(n_same, 1) + diff_above / max(n_diff, 1))
    else:
        score = (same_below + diff_above) / same.numel()
    p = d.numel()
    valid = torch.ones(p + 1, dtype=torch.bool)
    valid[1:p] = d[1:] > d[:-1]  # a cut between equal distances is not realizable
    score = torch.where(valid, score, torch.tensor(-1.0, dtype=torch.float64))
    t = int(score.argmax())
    if t == 0:
        threshold = float(d[0]) / 2  # everything "different"
    elif t == p:
        threshold = float(d[-1]) * (1 + 1e-6) + 1e-6  # everything "same"
    else:
        threshold = float(d[t - 1] + d[t]) / 2
    log.debug("calibrated threshold %.4f over %d same / %d different pairs: %.3f", threshold, n_same, n_diff,
              float(score[t]))
    return Calibration(threshold, float(score[t]), n_same, n_diff)


def pair_accuracy(embeddings: torch.Tensor, labels: Sequence[str | int], threshold: float,
                  metric: Metric | str = "euclidean", balanced: bool = True) -> float:
    """How many of the ``N(N-1)/2`` pairs a fixed ``threshold`` classifies right ("same" under it).

    This is the held-out half of an honest verification measure: the threshold comes from
    :func:`calibrate_threshold` on other (training) pairs. ``balanced`` averages the accuracies on
    same and on different pairs, so a collection with many classes is not scored by its
    overwhelming number of different pairs.
    """
    n = embeddings.shape[0]
    if len(labels) != n or n < 2:
        raise ValueError(f"pair accuracy needs at least two embeddings and one label each ({len(labels)} for {n})")
    ids = {lb: i for i, lb in enumerate(dict.fromkeys(labels))}
    lab = torch.tensor([ids[lb] for lb in labels])
    iu = torch.triu_indices(n, n, 1)
    d = distance_matrix(embeddings, embeddings, metric)[iu[0], iu[1]]
    same = lab[iu[0]] == lab[iu[1]]
    right = (d < threshold) == same
    if not balanced:
        return float(right.float().mean())
    parts = [right[same].float().mean(), right[~same].float().mean()]
    parts = [p for p, m in zip(parts, (same.any(), (~same).any()), strict=True) if m]
    return float(sum(parts) / len(parts))
