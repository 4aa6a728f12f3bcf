"""A triplet-loss embedding head on a frozen layer (Schroff, Kalenichenko & Philbin 2015, FaceNet).

A small head (a linear map, or a one-hidden-layer MLP) turns a layer's pooled features into unit
vectors, trained so that two views of one class are closer than views of different classes by a
margin: ``max(0, d(a,p)^2 - d(a,n)^2 + margin)`` with squared Euclidean distances, as in the paper.
Batches hold P classes x K views (Hermans et al. 2017), and negatives are mined inside the batch:

- ``semi-hard`` (FaceNet): for each anchor-positive pair, the closest negative that is still
  farther than the positive; when there is none, the farthest negative (a zero loss),
- ``hard`` (batch-hard): each anchor's farthest positive against its closest negative.

The backbone is frozen, so the features of every augmented view are computed once, before
training; a step then costs only the head. Verification accuracy is measured honestly on held-out
pairs: the threshold is calibrated on training pairs, the accuracy read on held-out ones, for the
head and (once, as the baseline) for the frozen features themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.errors import EngineError
from cnnviz.inspection.embedding_map import make_thumbnail, map_panels, pca_2d
from cnnviz.inspection.features import CancelFn, ProgressFn, check_cancel, extract_features
from cnnviz.inspection.verification import calibrate_threshold, pair_accuracy
from cnnviz.models import LoadedModel, validate_layer

from .augment import random_view, to_float
from .checkpoint import load_module
from .loop import Trainer

log = logging.getLogger(__name__)

THUMB = 40  # px, the held-out views' thumbnails in embedding-map previews
MAP_SIZE = 480
Mining = Literal["semi-hard", "hard"]
MININGS: tuple[str, ...] = ("semi-hard", "hard")


class EmbeddingHead(nn.Module):
    """Centred, scaled features -> a ``dim``-d unit vector (linear, or MLP with ``hidden`` units)."""

    def __init__(self, in_dim: int, dim: int = 128, hidden: int = 0) -> None:
        super().__init__()
        self.in_dim, self.dim, self.hidden = int(in_dim), int(dim), int(hidden)
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("scale", torch.ones(()))
        if self.hidden:
            self.net: nn.Module = nn.Sequential(nn.Linear(self.in_dim, self.hidden), nn.ReLU(),
                                                nn.Linear(self.hidden, self.dim))
        else:
            self.net = nn.Linear(self.in_dim, self.dim)

    def config(self) -> dict[str, Any]:
        return {"arch": "embedding_head", "in_dim": self.in_dim, "dim": self.dim, "hidden": self.hidden}

    def fit_input(self, feats: torch.Tensor) -> None:
        """Centre on the training features and scale them to unit mean norm (stored with the weights)."""
        with torch.no_grad():
            self.mean.copy_(feats.mean(0))
            self.scale.copy_((feats - self.mean).norm(dim=1).mean().clamp_min(1e-6))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net((feats - self.mean) / self.scale), dim=1)


def _sq_distances(e: torch.Tensor) -> torch.Tensor:
    return (2.0 - 2.0 * e @ e.T).clamp_min(0.0)  # unit vectors: |a-b|^2 = 2 - 2 a.b


def semi_hard_triplet_loss(e: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, float]:
    """FaceNet's loss over every anchor-positive pair of the batch; also the fraction with a loss > 0."""
    d = _sq_distances(e)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=e.device)
    pos = same & ~eye
    a_idx, p_idx = pos.nonzero(as_tuple=True)
    if a_idx.numel() == 0:
        return e.sum() * 0.0, 0.0
    d_ap = d[a_idx, p_idx]  # [P]
    d_an = d[a_idx]  # [P, N]
    neg = ~same[a_idx]
    semi = neg & (d_an > d_ap[:, None])
    inf = torch.tensor(float("inf"), device=e.device)
    closest_semi = torch.where(semi, d_an, inf).amin(1)
    farthest = torch.where(neg, d_an, -inf).amax(1)
    d_n = torch.where(semi.any(1), closest_semi, farthest)
    losses = F.relu(d_ap - d_n + margin)
    valid = neg.any(1)
    losses = losses[valid]
    if losses.numel() == 0:
        return e.sum() * 0.0, 0.0
    return losses.mean(), float((losses > 0).float().mean())


def batch_hard_triplet_loss(e: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, float]:
    """Each anchor's farthest positive against its closest negative (Hermans et al. 2017)."""
    d = _sq_distances(e)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=e.device)
    pos, neg = same & ~eye, ~same
    ok = pos.any(1) & neg.any(1)
    if not ok.any():
        return e.sum() * 0.0, 0.0
    inf = torch.tensor(float("inf"), device=e.device)
    hardest_pos = torch.where(pos, d, -inf).amax(1)
    hardest_neg = torch.where(neg, d, inf).amin(1)
    losses = F.relu(hardest_pos - hardest_neg + margin)[ok]
    return losses.mean(), float((losses > 0).float().mean())


LOSSES = {"semi-hard": semi_hard_triplet_loss, "hard": batch_hard_triplet_loss}


@dataclass
class TripletData:
    """Frozen features of the augmented views, split into training and held-out parts."""

    layer: str
    size: int
    train: torch.Tensor  # [Nt, D]
    train_labels: torch.Tensor  # [Nt] class indices
    heldout: torch.Tensor  # [Nh, D]
    heldout_labels: torch.Tensor
    classes: list[str]
    split: str  # "images": held-out views come from held-out images; "views": from other views
    heldout_thumbs: list[torch.Tensor] = field(default_factory=list)  # uint8 [h,w,3] of each held-out view


def _split(labels: Sequence[str], holdout: float, split: str, gen: torch.Generator) -> tuple[list[bool], str]:
    """Which images are held out. By images when every class has two or more, else by views."""
    by_class: dict[str, list[int]] = {}
    for i, lb in enumerate(labels):
        by_class.setdefault(lb, []).append(i)
    if split not in ("auto", "images", "views"):
        raise EngineError("bad-params", f"unknown split {split!r}; expected auto, images or views")
    if split == "auto":
        split = "images" if all(len(v) >= 2 for v in by_class.values()) else "views"
    held = [False] * len(labels)
    if split == "images":
        for lb, idx in by_class.items():
            if len(idx) < 2:
                raise EngineError("bad-params", f"class {lb!r} has one image; a split by images needs two")
            k = min(len(idx) - 1, max(1, round(holdout * len(idx))))
            for j in torch.randperm(len(idx), generator=gen)[:k].tolist():
                held[idx[j]] = True
    return held, split


def triplet_data(model: LoadedModel, images: Sequence[torch.Tensor], labels: Sequence[str], *,
                 layer: str | None = None, size: int | None = None, views: int = 8, holdout: float = 0.25,
                 split: str = "auto", augment: float = 1.0, seed: int = 0, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> TripletData:
    """Features of ``views`` augmented views of every image (plus the image itself), split in two.

    ``augment`` scales the augmentation (crop range, colour jitter, rotation); 0 leaves only the
    plain image. With a split by views, each image's last quarter of views is held out.
    """
    if len(images) != len(labels):
        raise EngineError("bad-params", f"{len(labels)} labels for {len(images)} images")
    classes = list(dict.fromkeys(labels))
    if len(classes) < 2:
        raise EngineError("bad-params", "a triplet head needs at least two classes")
    layer = validate_layer(model, layer, spatial=False)
    size = int(size or model.preprocessing.input_size)
    gen = torch.Generator().manual_seed(int(seed))
    held_img, split_used = _split(labels, holdout, split, gen)
    a = max(0.0, float(augment))
    n_views = int(views)
    if split_used == "views" and n_views < 1:
        raise EngineError("bad-params", "a split by views needs views >= 1 (or two images per class)")
    n_held_views = min(n_views, max(1, round(holdout * (n_views + 1)))) if split_used == "views" else 0
    chunks: list[torch.Tensor] = []
    owner: list[int] = []
    held_view: list[bool] = []
    thumbs: list[torch.Tensor] = []
    # One image's views at a time: a large collection's views never sit in memory all at once.
    for i, raw in enumerate(images):
        check_cancel(cancel, "augmenting")
        img = to_float(raw.cpu())
        base = model.preprocessing.fit(img, size)
        per = [base] + [random_view(img, size, gen, scale=(max(0.05, 1 - 0.65 * a), 1.0),
                                    jitter=0.4 * a, degrees=15.0 * a, grey_p=0.1 * a) for _ in range(n_views)]
        chunks.append(extract_features(model, per, layer, size=size))
        for j, v in enumerate(per):
            held = held_img[i] or (split_used == "views" and j >= len(per) - n_held_views)
            owner.append(i)
            held_view.append(held)
            if held:
                thumbs.append(make_thumbnail(v, THUMB))
        if progress is not None:
            progress(i + 1, len(images), "features")
    feats = torch.cat(chunks)
    lab = torch.tensor([classes.index(labels[i]) for i in owner])
    mask = torch.tensor(held_view)
    log.info("triplet data: %d views of %d images, %d classes, %d held out (%s)", len(owner), len(images),
             len(classes), int(mask.sum()), split_used)
    return TripletData(layer=layer, size=size, train=feats[~mask], train_labels=lab[~mask], heldout=feats[mask],
                       heldout_labels=lab[mask], classes=classes, split=split_used, heldout_thumbs=thumbs)


def verification_accuracy(train_e: torch.Tensor, train_labels: torch.Tensor, held_e: torch.Tensor,
                          held_labels: torch.Tensor) -> tuple[float, float]:
    """``(threshold, held-out balanced accuracy)``: calibrated on training pairs, read on held-out pairs."""
    cal = calibrate_threshold(train_e, train_labels.tolist(), balanced=True)
    return cal.threshold, pair_accuracy(held_e, held_labels.tolist(), cal.threshold, balanced=True)


class TripletTrainer(Trainer):
    """Train an :class:`EmbeddingHead` on the training features of :class:`TripletData`."""

    kind = "triplet_head"

    def __init__(self, data: TripletData, *, backbone: str, dim: int = 128, hidden: int = 0, margin: float = 0.2,
                 mining: Mining | str = "semi-hard", classes_per_batch: int = 8, per_class: int = 4,
                 lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0, eval_every: int = 50) -> None:
        if mining not in LOSSES:
            raise EngineError("bad-params", f"unknown mining {mining!r}; expected one of {MININGS}")
        if data.heldout.shape[0] < 2:
            raise EngineError("bad-params", "the held-out part has fewer than two views")
        torch.manual_seed(seed)
        head = EmbeddingHead(data.train.shape[1], dim, hidden)
        head.fit_input(data.train)
        super().__init__(head, lr=lr, weight_decay=weight_decay, seed=seed, eval_every=eval_every)
        self.data, self.backbone = data, backbone
        self.margin, self.mining = float(margin), str(mining)
        self.classes_per_batch = min(int(classes_per_batch), len(data.classes))
        self.per_class = int(per_class)
        self.by_class = [torch.nonzero(data.train_labels == c).flatten() for c in range(len(data.classes))]
        self.trainable = [c for c, idx in enumerate(self.by_class) if idx.numel() >= 1]
        frozen = (F.normalize(data.train, dim=1), F.normalize(data.heldout, dim=1))
        self.frozen_threshold, self.frozen_accuracy = verification_accuracy(frozen[0], data.train_labels, frozen[1],
                                                                            data.heldout_labels)

    @property
    def threshold(self) -> float:
        """The "same" threshold of the head as last evaluated (calibrated on training pairs)."""
        for e in reversed(self.evals):
            if "threshold" in e:
                return float(e["threshold"])
        return self.frozen_threshold

    def config(self) -> dict[str, Any]:
        return {"network": self.net.config(), "backbone": self.backbone, "layer": self.data.layer,
                "size": self.data.size, "pool": "avg", "margin": self.margin, "mining": self.mining,
                "classes": self.data.classes, "split": self.data.split,
                "classes_per_batch": self.classes_per_batch, "per_class": self.per_class}

    def batch_loss(self, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        pick = torch.randperm(len(self.trainable), generator=gen)[: self.classes_per_batch].tolist()
        idx = []
        for c in (self.trainable[i] for i in pick):
            members = self.by_class[c]
            if members.numel() >= self.per_class:
                idx.append(members[torch.randperm(members.numel(), generator=gen)[: self.per_class]])
            else:
                idx.append(members[torch.randint(0, members.numel(), (self.per_class,), generator=gen)])
        rows = torch.cat(idx)
        e = self.net(self.data.train[rows])
        loss, active = LOSSES[self.mining](e, self.data.train_labels[rows], self.margin)
        return loss, {"active_triplets": active}

    def preview(self) -> torch.Tensor | None:
        """PCA maps of the held-out views, by the frozen features (left) and by the head (right):
        views of a class drawing together on the right is what the training is for."""
        if not self.data.heldout_thumbs:
            return None
        coords = [pca_2d(e) for e in (F.normalize(self.data.heldout, dim=1), self.net(self.data.heldout))]
        labels = [str(self.data.classes[int(i)]) for i in self.data.heldout_labels]
        titles = [f"frozen features of {self.data.layer} (PCA)", f"trained head, step {self.step} (PCA)"]
        picture = map_panels(coords, self.data.heldout_thumbs, titles, labels=labels, size=MAP_SIZE, thumb=THUMB)
        return picture.permute(2, 0, 1).float() / 255

    def evaluate(self) -> dict[str, float]:
        threshold, acc = verification_accuracy(self.net(self.data.train), self.data.train_labels,
                                               self.net(self.data.heldout), self.data.heldout_labels)
        return {"heldout_accuracy": acc, "frozen_accuracy": self.frozen_accuracy, "threshold": threshold}


def load_head(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> EmbeddingHead:
    """Rebuild a trained head from its safetensors tensors and stored config."""
    spec = config.get("network") or {}
    if spec.get("arch") != "embedding_head":
        raise EngineError("bad-weights", f"not an embedding head: {spec}")
    head = EmbeddingHead(int(spec["in_dim"]), int(spec["dim"]), int(spec["hidden"]))
    load_module(head, tensors)
    for p in head.parameters():
        p.requires_grad_(False)
    return head.eval()


def head_embed(model: LoadedModel, head: EmbeddingHead, images: Sequence[torch.Tensor], layer: str,
               size: int | None = None, *, progress: ProgressFn | None = None,
               cancel: CancelFn | None = None) -> torch.Tensor:
    """Unit embeddings ``[N, dim]`` of images through the frozen backbone's ``layer`` and the head."""
    feats = extract_features(model, images, layer, size=size, progress=progress, cancel=cancel)
    if feats.shape[1] != head.in_dim:
        raise EngineError("bad-weights", f"layer {layer!r} gives {feats.shape[1]} features; "
                                              f"the head expects {head.in_dim}")
    with torch.no_grad():
        return head(feats)


def estimate_cost(model: LoadedModel, *, steps: int = 1000, views: int = 8, size: int | None = None,
                  n_images: int = 1, classes_per_batch: int = 8, per_class: int = 4, **_: object) -> float:
    """Backbone passes: one forward (a third of a pass) per view at ``size``; the head's steps are
    nearly free beside them (a few thousand multiply-adds per row)."""
    area = ((size or model.spec.input_size) / model.spec.input_size) ** 2
    return float(n_images) * (views + 1) * area / 3.0 + steps * classes_per_batch * per_class * 1e-4
