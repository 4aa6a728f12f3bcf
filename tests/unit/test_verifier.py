"""The learned verification head: its logistic is the plain formula, and it learns an easy split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cnnviz.training import PairTrainer, VerificationHead, load_verifier, unpack
from cnnviz.training.triplet import TripletData
from cnnviz.training.verifier import balanced_accuracy


def _data(seed: int = 0, classes: int = 4, per_class: int = 10, dim: int = 24, noise: float = 0.35) -> TripletData:
    """Non-negative features (as after a ReLU): one prototype per class plus noise; held-out views apart."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, dim, generator=g) * (torch.rand(classes, dim, generator=g) > 0.5)
    feats = protos.repeat_interleave(per_class, 0) + noise * torch.rand(classes * per_class, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    held = (torch.arange(classes * per_class) % per_class) >= per_class - 3
    return TripletData(layer="act_head", size=32, train=feats[~held], train_labels=labels[~held],
                       heldout=feats[held], heldout_labels=labels[held], classes=[f"c{i}" for i in range(classes)],
                       split="images")


@pytest.mark.parametrize("form", ["abs", "chi2"])
def test_logistic_equals_the_plain_formula(form):
    """y = sigmoid(sum_k w_k |f_i - f_j|_k + b), or with (f_i - f_j)^2 / (f_i + f_j): a loop over k."""
    head = VerificationHead(6, form)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head.linear.weight.copy_(torch.randn(1, 6, generator=g))
        head.linear.bias.fill_(0.3)
    a, b = torch.rand(3, 6, generator=g), torch.rand(3, 6, generator=g)
    a[0, 2] = b[0, 2] = 0.0  # a coordinate zero in both: adds nothing (no division by zero)
    w, bias = head.linear.weight[0].detach().tolist(), float(head.linear.bias.detach())
    for n in range(3):
        s = bias
        for k in range(6):
            fi, fj = float(a[n, k]), float(b[n, k])
            if form == "abs":
                s += w[k] * abs(fi - fj)
            elif fi + fj > 0:
                s += w[k] * (fi - fj) ** 2 / (fi + fj)
        got = float(head.probability(a[n:n + 1], b[n:n + 1]).detach()[0])
        assert got == pytest.approx(1 / (1 + math.exp(-s)), rel=1e-4)


@pytest.mark.parametrize("form", ["abs", "chi2"])
def test_training_beats_chance_and_the_stored_weights_answer_the_same(form):
    data = _data()
    trainer = PairTrainer(data, backbone="efficientnet-lite0", form=form, pairs_per_batch=64, lr=0.05, eval_every=40)
    trainer.train(120)
    last = trainer.evals[-1]
    assert trainer.evals[0]["heldout_accuracy"] == pytest.approx(0.5)  # w = 0: p = 0.5, "same" for every pair
    assert last["heldout_accuracy"] > 0.85  # chance is 0.5 (balanced)
    assert 0.5 <= last["threshold_accuracy"] <= 1 and last["threshold"] > 0
    # The held-out accuracy is the plain count over every held-out pair.
    e = F.normalize(data.heldout, dim=1)
    right_same, n_same, right_diff, n_diff = 0, 0, 0, 0
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            same = bool(data.heldout_labels[i] == data.heldout_labels[j])
            decided = float(trainer.net.probability(e[i:i + 1], e[j:j + 1])[0]) >= 0.5
            n_same, n_diff = n_same + same, n_diff + (not same)
            right_same += same and decided
            right_diff += (not same) and not decided
    assert last["heldout_accuracy"] == pytest.approx(0.5 * (right_same / n_same + right_diff / n_diff), abs=1e-6)
    tensors, meta = unpack(trainer.weights(name="v"))
    loaded = load_verifier(tensors, meta["config"])
    torch.testing.assert_close(loaded.probability(e[:5], e[5:10]), trainer.net.probability(e[:5], e[5:10]))
    assert meta["config"]["network"] == {"arch": "verification_head", "dim": 24, "form": form}


def test_balanced_accuracy_is_the_mean_of_both_sides():
    same = torch.tensor([True, True, False, False, False, False])
    decided = torch.tensor([True, False, False, False, False, True])
    assert balanced_accuracy(decided, same) == pytest.approx(0.5 * (1 / 2 + 3 / 4))
