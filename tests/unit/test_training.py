"""The training engine on tiny networks: properties that a wrong implementation would fail."""

from __future__ import annotations

import itertools
import json
import pickle
import struct
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from tiny import tiny_model

from cnnviz.errors import EngineError
from cnnviz.inspection.verification import pair_accuracy
from cnnviz.models import LoadedModel
from cnnviz.synthesis.loop import Cancelled
from cnnviz.synthesis.style import rgb_to_yiq
from cnnviz.training import (
    CheckpointError,
    EmbeddingHead,
    FastStyleTrainer,
    TrainCallbacks,
    TransformNet,
    TripletData,
    TripletTrainer,
    batch_hard_triplet_loss,
    load_head,
    load_transform_net,
    pack,
    read_meta,
    semi_hard_triplet_loss,
    step_generator,
    stylize,
    triplet_data,
    unpack,
    verification_accuracy,
)
from cnnviz.training.checkpoint import load_module, module_tensors
from cnnviz.training.style_net import EPS


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny_model()


def rand_image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def stripes(n: int = 32, period: int = 4) -> torch.Tensor:
    """Red, green and blue diagonal stripes: a style far from any smooth content."""
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    ph = ((xx + yy) // period) % 3
    return torch.stack([(ph == 0).float(), (ph == 1).float() * 0.8, (ph == 2).float()])


def smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth random colour field (upsampled 4x5 noise): content with no stripes in it."""
    low = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]


def style_trainer(model: LoadedModel, **kw: Any) -> FastStyleTrainer:
    """A FastStyleTrainer small enough for a unit test: 32 px crops, batch 2, width 4, one block."""
    args: dict[str, Any] = dict(size=32, batch_size=2, width=4, blocks=1, lr=0.01, seed=0, eval_every=2)
    args.update(kw)
    return FastStyleTrainer(model, stripes(), [smooth_image(40, 48, 2), smooth_image(36, 44, 3)], **args)


def clustered(classes: int = 5, train_per: int = 16, held_per: int = 8, informative: int = 8, noise: int = 40,
              noise_scale: float = 1.6, seed: int = 0) -> TripletData:
    """Synthetic frozen features: class centres in a few dims, drowned by strong noise in many more."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, informative, generator=gen) * 1.5

    def draw(per: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(classes).repeat_interleave(per)
        signal = centres[labels] + 0.3 * torch.randn(len(labels), informative, generator=gen)
        junk = noise_scale * torch.randn(len(labels), noise, generator=gen)
        return torch.cat([signal, junk], 1) + 3.0, labels

    train, train_labels = draw(train_per)
    heldout, heldout_labels = draw(held_per)
    return TripletData(layer="synthetic", size=32, train=train, train_labels=train_labels, heldout=heldout,
                       heldout_labels=heldout_labels, classes=[f"c{i}" for i in range(classes)], split="images")


def triplet_trainer(data: TripletData, **kw: Any) -> TripletTrainer:
    args: dict[str, Any] = dict(backbone="synthetic", dim=8, classes_per_batch=4, per_class=4, lr=0.01, seed=0,
                                eval_every=5)
    args.update(kw)
    return TripletTrainer(data, **args)


def same_history(a: Any, b: Any) -> None:
    assert a.step == b.step
    assert a.losses == b.losses
    assert a.parts == b.parts
    assert a.evals == b.evals


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --- checkpoint blobs --------------------------------------------------------------------------------


def test_pack_unpack_round_trips_tensors_and_meta() -> None:
    """Every tensor (dtype, shape, values, 0-d included) and the JSON metadata come back as they went in."""
    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 4, generator=gen), "b.c": torch.arange(7), "half": torch.randn(5).half(),
               "flag": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5),
               "strided": torch.randn(4, 6, generator=gen).T}
    meta = {"kind": "x", "step": 3, "nested": {"list": [1, 2.5, None], "text": "ünï"}, "flag": True}
    blob = pack(tensors, meta)
    assert isinstance(blob, bytes)
    back, meta_back = unpack(blob)
    assert meta_back == meta and read_meta(blob) == meta
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def test_blob_is_a_plain_safetensors_file_without_pickle() -> None:
    """The blob is 8-byte header length + JSON header + raw tensor bytes: safetensors reads it, pickle cannot."""
    tensors = {"w": torch.randn(4, 4), "b": torch.zeros(4)}
    blob = pack(tensors, {"kind": "t"})
    loaded = st_load(blob)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    assert json.loads(header["__metadata__"]["cnnviz"]) == {"kind": "t"}
    data_bytes = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert 8 + n + data_bytes == len(blob)  # nothing but the header and the tensors' raw bytes
    assert not blob.startswith((b"PK", b"\x80"))  # neither torch.save's zip nor a pickle stream
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(blob)


@pytest.mark.parametrize("blob", [b"", b"short", b"\xff" * 64, struct.pack("<Q", 10) + b"{not json!", b"PK\x03\x04"
                                  + bytes(100), struct.pack("<Q", 2) + b"[]"])
def test_garbage_is_a_checkpoint_error(blob: bytes) -> None:
    """Bytes that are not a safetensors blob raise CheckpointError (a ValueError), never anything else."""
    with pytest.raises(CheckpointError):
        unpack(blob)
    assert issubclass(CheckpointError, ValueError)


def test_truncated_blob_is_a_checkpoint_error() -> None:
    """A blob cut short keeps a readable header but its tensor data is gone: unpack says so."""
    blob = pack({"w": torch.randn(64)}, {"kind": "t"})
    assert read_meta(blob[:-16]) == {"kind": "t"}
    with pytest.raises(CheckpointError):
        unpack(blob[:-16])


def test_load_module_is_strict() -> None:
    """A missing, extra or misshapen weight is a CheckpointError, not a silent partial load."""
    net = torch.nn.Linear(3, 2)
    good = module_tensors(net)
    load_module(torch.nn.Linear(3, 2), good)
    for bad in ({k: v for k, v in good.items() if not k.endswith("bias")}, {**good, "net.extra": torch.zeros(1)},
                {"net.weight": torch.zeros(2, 4), "net.bias": torch.zeros(2)}):
        with pytest.raises(CheckpointError):
            load_module(torch.nn.Linear(3, 2), bad)


# --- the transformation network and stylize ----------------------------------------------------------


def perturbed_net(width: int = 4, blocks: int = 1, seed: int = 0, std: float = 0.05) -> TransformNet:
    """A TransformNet whose zero-initialized last convolution got random weights: no longer the identity."""
    torch.manual_seed(seed)
    net = TransformNet(width, blocks)
    last = net.body[-1][1]
    with torch.no_grad():
        last.weight.normal_(0, std)
        last.bias.normal_(0, std)
    return net.eval()


@pytest.mark.parametrize("hw", [(32, 32), (37, 53), (5, 7)])
def test_transform_net_starts_as_the_identity(hw: tuple[int, int]) -> None:
    """Untrained, the net returns its input (clamped to [EPS, 1-EPS]) at the input's own size, odd sizes too."""
    torch.manual_seed(0)
    net = TransformNet(4, 1)
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0, 0], x[0, 1, 0, 0] = 0.0, 1.0
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert torch.allclose(y, x.clamp(EPS, 1 - EPS), atol=1e-5)
    inside = (x > 0.01) & (x < 0.99)
    assert torch.allclose(y[inside], x[inside], atol=2e-3)


@pytest.mark.parametrize("hw", [(1, 1), (3, 30), (4, 9), (8, 8)])
def test_transform_net_takes_tiny_images(hw: tuple[int, int]) -> None:
    """Sides under the 9x9 convolution's reach are padded (replicated) and cropped back, not an error."""
    torch.manual_seed(0)
    net = TransformNet(4, 1).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, *hw))
    assert out.shape == (2, 3, *hw) and bool(((out > 0) & (out < 1)).all())


def test_transform_net_output_is_a_valid_image_of_the_input_size() -> None:
    """A non-identity net still maps [0,1] (extremes included) into the open (0,1), at any size."""
    net = perturbed_net(std=0.2)
    x = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(2))
    x[..., :4, :4] = 0.0
    x[..., -4:, -4:] = 1.0
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert float(y.min()) > 0.0 and float(y.max()) < 1.0
    assert float((y - x).abs().mean()) > 0.01  # it really is not the identity


def test_transform_net_is_batch_independent() -> None:
    """Instance normalization: an image's output does not depend on the other images of its batch."""
    net = perturbed_net()
    x = torch.rand(3, 3, 24, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(net(x)[1:2], net(x[1:2]), atol=1e-6)


def test_stylize_strength_blends_content_and_style() -> None:
    """strength=0 is the (resized) content exactly; 0.5 is the midpoint of strength 0 and strength 1."""
    from cnnviz.synthesis.transforms import fit_long_side

    net = perturbed_net()
    img = rand_image(40, 60, 4)
    s0 = stylize(net, img, size=30, strength=0.0)
    s1 = stylize(net, img, size=30, strength=1.0)
    half = stylize(net, img, size=30, strength=0.5)
    assert s0.shape == s1.shape == (3, 20, 30)
    assert torch.equal(s0, fit_long_side(img, 30))
    assert float((s1 - s0).abs().mean()) > 0.01
    assert torch.allclose(half, (s0 + s1) / 2, atol=1e-6)
    assert stylize(net, img).shape == img.shape  # no size: the image's own


def test_stylize_preserve_color_keeps_the_content_chroma() -> None:
    """preserve_color: the stylized luminance (Y) with the content's I and Q, wherever no channel was clamped."""
    net = perturbed_net(std=0.1)
    img = 0.25 + 0.5 * rand_image(32, 40, 5)
    plain = stylize(net, img)
    kept = stylize(net, img, preserve_color=True)
    yiq_c, yiq_s, yiq_k = rgb_to_yiq(img), rgb_to_yiq(plain), rgb_to_yiq(kept)
    unclamped = ((kept > 1e-4) & (kept < 1 - 1e-4)).all(0)
    assert float(unclamped.float().mean()) > 0.9
    assert torch.allclose(yiq_k[1:, unclamped], yiq_c[1:, unclamped], atol=1e-4)
    assert torch.allclose(yiq_k[0, unclamped], yiq_s[0, unclamped], atol=1e-4)
    assert float((yiq_s[1:] - yiq_c[1:]).abs().mean()) > 1e-3  # without it, the chroma did change


def test_stylize_is_deterministic_and_leaves_the_input_alone() -> None:
    """Two calls are bit-identical, and neither writes into the caller's image."""
    net = perturbed_net()
    img = rand_image(33, 47, 6)
    before = img.clone()
    a = stylize(net, img, size=40, preserve_color=True, strength=0.7)
    b = stylize(net, img, size=40, preserve_color=True, strength=0.7)
    assert torch.equal(a, b)
    assert torch.equal(img, before)


# --- triplet losses ----------------------------------------------------------------------------------


def unit_embeddings(n_classes: int = 4, per: int = 3, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(n_classes * per, dim, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(per)
    return e, labels[torch.randperm(len(labels), generator=gen)]


def brute_semi_hard(e: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[float, float]:
    """FaceNet semi-hard mining, one (anchor, positive) pair at a time."""
    n = len(labels)
    d = [[float(((e[i] - e[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    losses = []
    for a, p in itertools.permutations(range(n), 2):
        if labels[a] != labels[p]:
            continue
        negs = [d[a][k] for k in range(n) if labels[k] != labels[a]]
        if not negs:
            continue
        farther = [x for x in negs if x > d[a][p]]
        d_n = min(farther) if farther else max(negs)
        losses.append(max(0.0, d[a][p] - d_n + margin))
    if not losses:
        return 0.0, 0.0
    return sum(losses) / len(losses), sum(x > 0 for x in losses) / len(losses)


def brute_batch_hard(e: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[float, float]:
    """Batch-hard mining, one anchor at a time: its farthest positive against its closest negative."""
    n = len(labels)
    losses = []
    for a in range(n):
        pos = [float(((e[a] - e[k]) ** 2).sum()) for k in range(n) if k != a and labels[k] == labels[a]]
        neg = [float(((e[a] - e[k]) ** 2).sum()) for k in range(n) if labels[k] != labels[a]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    if not losses:
        return 0.0, 0.0
    return sum(losses) / len(losses), sum(x > 0 for x in losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.2, 1.0])
@pytest.mark.parametrize(("fn", "brute"), [(semi_hard_triplet_loss, brute_semi_hard),
                                           (batch_hard_triplet_loss, brute_batch_hard)],
                         ids=["semi-hard", "batch-hard"])
def test_triplet_losses_match_a_brute_force_loop(fn: Any, brute: Any, margin: float, seed: int) -> None:
    """The vectorized mining equals its definition evaluated triplet by triplet (loss and active fraction)."""
    e, labels = unit_embeddings(seed=seed)
    loss, active = fn(e, labels, margin)
    want_loss, want_active = brute(e, labels, margin)
    assert float(loss) == pytest.approx(want_loss, abs=1e-9)
    assert active == pytest.approx(want_active)
    assert want_loss > 0  # random embeddings: the test is not vacuous


def test_triplet_losses_with_unequal_classes_and_singletons() -> None:
    """A class of one (no positive) and uneven class sizes are handled as the definitions say."""
    e, _ = unit_embeddings(n_classes=3, per=3, seed=4)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 3])
    for fn, brute in ((semi_hard_triplet_loss, brute_semi_hard), (batch_hard_triplet_loss, brute_batch_hard)):
        loss, active = fn(e, labels, 0.5)
        want_loss, want_active = brute(e, labels, 0.5)
        assert float(loss) == pytest.approx(want_loss, abs=1e-9)
        assert active == pytest.approx(want_active)


@pytest.mark.parametrize("fn", [semi_hard_triplet_loss, batch_hard_triplet_loss])
def test_triplet_losses_vanish_on_separated_classes(fn: Any) -> None:
    """Tight clusters farther apart than the margin give a zero loss and no active triplet."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(3)
    e = F.normalize(torch.eye(6)[labels] + 0.01 * torch.randn(12, 6, generator=gen), dim=1)
    loss, active = fn(e, labels, 0.2)
    assert float(loss) == 0.0 and active == 0.0


@pytest.mark.parametrize("fn", [semi_hard_triplet_loss, batch_hard_triplet_loss])
def test_triplet_losses_without_triplets_are_zero_and_differentiable(fn: Any) -> None:
    """One class only (no negative) or all singletons (no positive): a zero loss that backward accepts."""
    for labels in (torch.zeros(4, dtype=torch.long), torch.arange(4)):
        e = F.normalize(torch.randn(4, 5), dim=1).requires_grad_(True)
        loss, active = fn(e, labels, 0.2)
        loss.backward()
        assert float(loss.detach()) == 0.0 and active == 0.0


@pytest.mark.parametrize("fn", [semi_hard_triplet_loss, batch_hard_triplet_loss])
def test_triplet_loss_gradient_pulls_positives_together(fn: Any) -> None:
    """A gradient step on the loss lowers it (the gradient reaches the embeddings with the right sign)."""
    e0, labels = unit_embeddings(dim=8, seed=5)
    x = e0.clone().float().requires_grad_(True)
    before, _ = fn(F.normalize(x, dim=1), labels, 0.5)
    before.backward()
    with torch.no_grad():
        after, _ = fn(F.normalize(x - 0.05 * x.grad, dim=1), labels, 0.5)
    assert float(after) < float(before.detach())


# --- pair accuracy -----------------------------------------------------------------------------------


def brute_pair_accuracy(e: torch.Tensor, labels: list[Any], threshold: float, balanced: bool) -> float:
    same_right, same_n, diff_right, diff_n = 0, 0, 0, 0
    for i, j in itertools.combinations(range(len(labels)), 2):
        said_same = float((e[i].double() - e[j].double()).norm()) < threshold
        if labels[i] == labels[j]:
            same_n += 1
            same_right += said_same
        else:
            diff_n += 1
            diff_right += not said_same
    if not balanced:
        return (same_right + diff_right) / (same_n + diff_n)
    parts = [r / n for r, n in ((same_right, same_n), (diff_right, diff_n)) if n]
    return sum(parts) / len(parts)


def safe_threshold(e: torch.Tensor, q: float) -> float:
    """A threshold near the q-quantile of the pair distances, midway in a gap (no pair sits on it)."""
    d = torch.pdist(e.double()).sort().values
    i = int(q * (len(d) - 1))
    gaps = d[1:] - d[:-1]
    j = i + int(gaps[i:].argmax()) if i < len(gaps) else len(gaps) - 1
    assert float(gaps[j]) > 1e-5
    return float(d[j] + d[j + 1]) / 2


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("q", [0.1, 0.3, 0.6])
def test_pair_accuracy_matches_a_brute_force_pair_loop(balanced: bool, q: float) -> None:
    """Fixed-threshold pair accuracy (plain and class-balanced) equals counting the pairs one by one."""
    gen = torch.Generator().manual_seed(7)
    e = F.normalize(torch.randn(14, 5, generator=gen), dim=1)
    labels = ["cat", "dog", "cat", "owl", "dog", "cat", "owl", "owl", "dog", "cat", "eel", "eel", "cat", "dog"]
    t = safe_threshold(e, q)
    got = pair_accuracy(e, labels, t, balanced=balanced)
    assert got == pytest.approx(brute_pair_accuracy(e, labels, t, balanced), abs=1e-6)  # a float32 mean


def test_pair_accuracy_balanced_differs_from_plain_and_handles_one_kind_of_pair() -> None:
    """Balanced weighs same and different pairs equally; with only different pairs it is their accuracy."""
    e = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0], [9.0, 0.0]])
    labels = [0, 0, 1, 1, 0]  # the last one is far from its class: its 2 same pairs are missed
    assert pair_accuracy(e, labels, 1.0, balanced=False) == pytest.approx(8 / 10)
    assert pair_accuracy(e, labels, 1.0, balanced=True) == pytest.approx((2 / 4 + 6 / 6) / 2)
    assert pair_accuracy(e[:3], [0, 1, 2], 0.05) == pytest.approx(1.0)
    assert pair_accuracy(e[:3], [0, 1, 2], 100.0) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        pair_accuracy(e[:1], [0], 1.0)


def test_verification_accuracy_calibrates_on_train_and_reads_on_heldout() -> None:
    """The threshold comes from the training pairs only; the accuracy is the held-out pairs' at that threshold."""
    data = clustered(noise=0)
    tr, he = F.normalize(data.train, dim=1), F.normalize(data.heldout, dim=1)
    t, acc = verification_accuracy(tr, data.train_labels, he, data.heldout_labels)
    assert acc == pytest.approx(pair_accuracy(he, data.heldout_labels.tolist(), t, balanced=True))
    t2, _ = verification_accuracy(tr, data.train_labels, he[:4], data.heldout_labels[:4])
    assert t2 == t


# --- the embedding head and triplet data -------------------------------------------------------------


def test_embedding_head_outputs_unit_vectors_of_centred_features() -> None:
    """fit_input centres on the training mean and scales to unit mean norm; outputs have norm 1."""
    data = clustered()
    torch.manual_seed(0)
    head = EmbeddingHead(data.train.shape[1], 8, hidden=16)
    head.fit_input(data.train)
    centred = (data.train - head.mean) / head.scale
    assert torch.allclose(centred.mean(0), torch.zeros(centred.shape[1]), atol=1e-5)
    assert float(centred.norm(dim=1).mean()) == pytest.approx(1.0, abs=1e-5)
    out = head(data.heldout)
    assert out.shape == (len(data.heldout), 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(len(out)), atol=1e-5)


def test_triplet_data_splits_by_images_or_by_views(model: LoadedModel) -> None:
    """Two images per class: whole images are held out; a class with one image: the last views are."""
    imgs = [rand_image(40, 44, s) for s in range(5)]
    d = triplet_data(model, imgs[:4], ["a", "a", "b", "b"], layer="act3", size=32, views=3, seed=0)
    assert d.split == "images" and d.classes == ["a", "b"]
    assert d.train.shape == (8, 16) and d.heldout.shape == (8, 16)  # 4 views each of 2 training, 2 held-out images
    assert sorted(d.heldout_labels.tolist()) == [0] * 4 + [1] * 4
    again = triplet_data(model, imgs[:4], ["a", "a", "b", "b"], layer="act3", size=32, views=3, seed=0)
    assert torch.equal(d.train, again.train) and torch.equal(d.heldout, again.heldout)

    v = triplet_data(model, imgs[:3], ["a", "a", "b"], layer="act3", size=32, views=7, seed=0)
    assert v.split == "views"
    assert v.heldout.shape[0] == 3 * 2 and v.train.shape[0] == 3 * 6  # 8 views per image, a quarter held out
    with pytest.raises(EngineError):
        triplet_data(model, imgs[:3], ["a", "a", "b"], layer="act3", size=32, views=2, split="images")
    with pytest.raises(EngineError):
        triplet_data(model, imgs[:2], ["a", "a"], layer="act3", size=32, views=2)
    with pytest.raises(EngineError, match="split"):
        triplet_data(model, imgs[:4], ["a", "a", "b", "b"], layer="act3", size=32, views=2, split="halves")
    with pytest.raises(EngineError, match="views >= 1"):  # nothing would be left to train on
        triplet_data(model, imgs[:3], ["a", "a", "b"], layer="act3", size=32, views=0, split="views")


def test_triplet_data_features_are_the_layers_pooled_output(model: LoadedModel) -> None:
    """With no augmentation every view is the plain image: its features are the layer's average-pooled output."""
    from cnnviz.inspection.features import extract_features

    imgs = [rand_image(32, 32, s) for s in range(4)]
    d = triplet_data(model, imgs, ["a", "a", "b", "b"], layer="act3", size=32, views=1, augment=0.0, seed=0)
    want = extract_features(model, imgs, "act3", size=32)
    allf = torch.cat([d.train, d.heldout])
    for row in want:
        assert (allf - row).abs().amax(1).min() < 1e-5


# --- the training loop: resume, cancel, callbacks ----------------------------------------------------


def test_step_generator_depends_on_seed_and_step_only() -> None:
    """A step's random draws are a function of (seed, step): the same pair draws the same, another pair not."""
    a = torch.rand(4, generator=step_generator(3, 5))
    assert torch.equal(a, torch.rand(4, generator=step_generator(3, 5)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(3, 6)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(4, 5)))


@pytest.mark.parametrize("k", [2, 3])
def test_fast_style_resume_is_exact(model: LoadedModel, k: int) -> None:
    """k steps, a checkpoint, a fresh trainer restored from it, then to N: the same weights and losses as N at once."""
    n = 6
    whole = style_trainer(model, eval_every=0)
    whole.train(n)
    part = style_trainer(model, eval_every=0)
    part.train(k)
    blob = part.checkpoint()
    assert read_meta(blob)["step"] == k
    resumed = style_trainer(model, eval_every=0)
    resumed.restore(blob)
    assert resumed.step == k and resumed.losses == whole.losses[:k]
    resumed.train(n)
    same_weights(resumed.net, whole.net)
    same_history(resumed, whole)
    state_w, state_r = whole.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert state_w.keys() == state_r.keys()
    for i, values in state_w.items():  # Adam's moments and step counts too
        assert values.keys() == state_r[i].keys() and all(torch.equal(v, state_r[i][k]) for k, v in values.items())


def test_fast_style_resume_keeps_the_evaluations(model: LoadedModel) -> None:
    """With evaluations every 2 steps, a run resumed at step 4 has the same evaluation history as an unbroken one."""
    whole = style_trainer(model)
    whole.train(6)
    part = style_trainer(model)
    part.train(4)
    resumed = style_trainer(model)
    resumed.restore(part.checkpoint())
    resumed.train(6)
    assert [e["step"] for e in whole.evals] == [0, 2, 4, 6]
    same_history(resumed, whole)
    same_weights(resumed.net, whole.net)


def test_fast_style_trains_towards_the_style(model: LoadedModel) -> None:
    """The preview's style loss starts at the content image's own and falls below it; content loss starts at 0."""
    tr = style_trainer(model, eval_every=20, style_weight=20)
    tr.train(40)
    first, last = tr.evals[0], tr.evals[-1]
    assert first["step"] == 0 and first["preview_content"] == pytest.approx(0.0, abs=1e-6)
    assert first["preview_style"] == pytest.approx(first["content_image_style"], rel=1e-3)
    assert last["step"] == 40 and last["preview_style"] < 0.5 * last["content_image_style"]
    assert set(tr.parts) == {"content", "style", "tv"} and all(len(v) == 40 for v in tr.parts.values())
    assert sum(tr.losses[-5:]) < 0.8 * sum(tr.losses[:5])


def test_triplet_resume_is_exact() -> None:
    """The triplet head resumed from a step-10 checkpoint ends where an unbroken 25-step run does."""
    data = clustered()
    whole = triplet_trainer(data)
    whole.train(25)
    part = triplet_trainer(data)
    part.train(10)
    resumed = triplet_trainer(data)
    resumed.restore(part.checkpoint())
    resumed.train(25)
    same_weights(resumed.net, whole.net)
    same_history(resumed, whole)


def test_cancel_raises_checkpoints_and_resumes_exactly() -> None:
    """cancel() true after step 2: Cancelled, with a step-2 checkpoint from which the run finishes as if unbroken."""
    data = clustered()
    seen: list[tuple[int, bytes]] = []
    done: list[int] = []
    cb = TrainCallbacks(progress=lambda s, t, st, v: done.append(s), cancel=lambda: len(done) >= 2,
                        checkpoint=lambda s, b: seen.append((s, b)))
    tr = triplet_trainer(data)
    with pytest.raises(Cancelled):
        tr.train(12, cb)
    assert done == [1, 2] and tr.step == 2
    assert [s for s, _ in seen] == [2] and read_meta(seen[0][1])["step"] == 2
    resumed = triplet_trainer(data)
    resumed.restore(seen[0][1])
    resumed.train(12)
    whole = triplet_trainer(data)
    whole.train(12)
    same_weights(resumed.net, whole.net)
    same_history(resumed, whole)


def test_cancel_before_the_first_step_resumes_exactly() -> None:
    """A run cancelled at step 0 resumes without a second baseline evaluation."""
    data = clustered()
    seen: list[bytes] = []
    tr = triplet_trainer(data)
    with pytest.raises(Cancelled):
        tr.train(10, TrainCallbacks(cancel=lambda: True, checkpoint=lambda s, b: seen.append(b)))
    resumed = triplet_trainer(data)
    resumed.restore(seen[0])
    resumed.train(10)
    whole = triplet_trainer(data)
    whole.train(10)
    same_history(resumed, whole)


def test_callbacks_progress_metrics_preview_and_checkpoint_every(model: LoadedModel) -> None:
    """progress every step (step, total, stage, loss); metrics per evaluation; previews and checkpoints on schedule."""
    progress: list[tuple[int, int, str, float]] = []
    metrics: list[tuple[int, dict[str, float]]] = []
    previews: list[tuple[int, torch.Tensor]] = []
    ckpts: list[int] = []
    cb = TrainCallbacks(progress=lambda *a: progress.append(a), preview=lambda s, im: previews.append((s, im)),
                        preview_every=3, checkpoint=lambda s, b: ckpts.append(read_meta(b)["step"]),
                        checkpoint_every=2, metrics=lambda s, v: metrics.append((s, v)))
    tr = style_trainer(model, eval_every=3, preview=rand_image(20, 30, 9), preview_size=30)
    tr.train(7, cb, stage="styling")
    assert [p[:3] for p in progress] == [(s, 7, "styling") for s in range(1, 8)]
    assert [p[3] for p in progress] == pytest.approx(tr.losses, abs=1e-6)
    assert ckpts == [2, 4, 6, 7]
    assert [s for s, _ in metrics] == [0, 3, 6, 7]
    assert [v for _, v in metrics] == [{k: v for k, v in e.items() if k != "step"} for e in tr.evals]
    assert [s for s, _ in previews] == [3, 6]
    for _, im in previews:
        assert im.shape == (3, 20, 30) and float(im.min()) >= 0 and float(im.max()) <= 1
    ckpts.clear()
    tr.train(8, TrainCallbacks(checkpoint=lambda s, b: ckpts.append(s), checkpoint_every=4))
    assert ckpts == [8]  # continued from 7: the end checkpoint only (8 is the end)


def test_restore_refuses_another_network_or_kind(model: LoadedModel) -> None:
    """A checkpoint of another width, or of another kind of trainer, or garbage: CheckpointError, state untouched."""
    blob = style_trainer(model, width=4).checkpoint()
    other = style_trainer(model, width=6)
    before = {k: v.clone() for k, v in other.net.state_dict().items()}
    with pytest.raises(CheckpointError):
        other.restore(blob)
    assert other.step == 0 and all(torch.equal(v, other.net.state_dict()[k]) for k, v in before.items())
    with pytest.raises(CheckpointError):
        style_trainer(model, blocks=2).restore(blob)
    with pytest.raises(CheckpointError):
        triplet_trainer(clustered()).restore(blob)
    with pytest.raises(CheckpointError):
        style_trainer(model).restore(b"garbage" * 10)


def test_triplet_head_learns_to_ignore_noise_dimensions() -> None:
    """On clusters drowned in noise dims, the head beats the frozen features' held-out accuracy and the loss falls."""
    data = clustered()
    tr = triplet_trainer(data, eval_every=50, dim=16)
    tr.train(150)
    frozen = tr.frozen_accuracy
    assert frozen < 0.9  # the noise does hurt the frozen features
    assert tr.evals[0]["step"] == 0 and tr.evals[-1]["step"] == 150
    assert tr.evals[-1]["heldout_accuracy"] > frozen + 0.05
    assert all(e["frozen_accuracy"] == pytest.approx(frozen, abs=1e-6) for e in tr.evals)
    assert sum(tr.losses[-20:]) / 20 < 0.5 * sum(tr.losses[:20]) / 20


@pytest.mark.parametrize("mining", ["semi-hard", "hard"])
def test_triplet_trainer_minings_and_mlp_head_train(mining: str) -> None:
    """Both minings and the MLP head train: the loss falls."""
    tr = triplet_trainer(clustered(seed=1), mining=mining, hidden=16, eval_every=0)
    tr.train(60)
    assert sum(tr.losses[-10:]) < sum(tr.losses[:10])
    with pytest.raises(EngineError):
        triplet_trainer(clustered(), mining="easy")


def test_style_weights_reload_to_the_same_outputs(model: LoadedModel) -> None:
    """weights() holds the net alone (no optimizer state); load_transform_net rebuilds it bit for bit."""
    tr = style_trainer(model)
    tr.train(4)
    tensors, meta = unpack(tr.weights(style_name="noise"))
    assert meta["kind"] == "fast_style" and meta["step"] == 4 and meta["style_name"] == "noise"
    assert meta["metrics"] == tr.evals[-1] and meta["config"]["network"] == {"arch": "transform_net", "width": 4,
                                                                             "blocks": 1}
    assert not any(k.startswith("optim.") for k in tensors)
    net = load_transform_net(tensors, meta["config"])
    img = rand_image(29, 41, 10)
    assert torch.equal(stylize(net, img), stylize(tr.net, img))
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(EngineError):
        load_transform_net(tensors, {"network": {"arch": "embedding_head"}})


def test_head_weights_reload_to_the_same_outputs() -> None:
    """weights() of the triplet head reloads via load_head, input centring buffers included."""
    data = clustered()
    tr = triplet_trainer(data, hidden=12)
    tr.train(10)
    tensors, meta = unpack(tr.weights())
    head = load_head(tensors, meta["config"])
    tr.net.eval()
    with torch.no_grad():
        assert torch.equal(head(data.heldout), tr.net(data.heldout))
    assert torch.equal(head.mean, tr.net.mean) and float(head.scale) != 1.0
    assert meta["config"]["classes"] == data.classes and meta["config"]["mining"] == "semi-hard"
    with pytest.raises(EngineError):
        load_head(tensors, {"network": {"arch": "transform_net"}})


def test_triplet_preview_maps_the_heldout_views_twice() -> None:
    """The preview is two PCA maps side by side (frozen features, head), one thumbnail per held-out view."""
    from cnnviz.inspection.embedding_map import make_thumbnail
    from cnnviz.training.triplet import MAP_SIZE

    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(40, 16, generator=g), torch.arange(40) % 4
    thumbs = [make_thumbnail(torch.rand(3, 20, 20, generator=g), 40) for _ in range(16)]
    data = TripletData("x", 32, feats[:24], labels[:24], feats[24:], labels[24:], list("abcd"), "images", thumbs)
    tr = TripletTrainer(data, backbone="m", dim=8, eval_every=5)
    pic = tr.preview()
    assert pic is not None and pic.shape[0] == 3 and pic.shape[1] > MAP_SIZE and pic.shape[2] > 2 * MAP_SIZE
    assert 0 <= float(pic.min()) and float(pic.max()) <= 1
    data.heldout_thumbs = []
    assert tr.preview() is None


def test_content_crops_keep_small_uint8_copies_and_cut_float_crops() -> None:
    """A big photo is kept as uint8 with its short side at most twice the crop; crops come out float in [0,1]."""
    from cnnviz.training.fast_style import ContentCrops

    big = torch.rand(3, 300, 400)
    crops = ContentCrops([big, (big * 255).round().to(torch.uint8)], size=32)
    assert all(im.dtype == torch.uint8 and min(im.shape[1:]) == 64 for im in crops.images)
    diff = (crops.images[0].int() - crops.images[1].int()).abs().max()
    assert int(diff) <= 1  # float and uint8 inputs are the same picture (up to rounding)
    batch = crops.batch(3, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
    assert 0 <= float(batch.min()) and float(batch.max()) <= 1


def test_triplet_data_takes_uint8_images(model: LoadedModel) -> None:
    """uint8 images (how a training job keeps a collection) give the features of their float twins."""
    imgs = [rand_image(40, 44, s) for s in range(4)]
    as_u8 = [(im * 255).round().to(torch.uint8) for im in imgs]
    as_f = [u.float() / 255 for u in as_u8]
    kw = {"layer": "act3", "size": 32, "views": 2, "seed": 0}
    a = triplet_data(model, as_u8, ["a", "a", "b", "b"], **kw)
    b = triplet_data(model, as_f, ["a", "a", "b", "b"], **kw)
    assert torch.allclose(a.train, b.train, atol=1e-6) and torch.allclose(a.heldout, b.heldout, atol=1e-6)
