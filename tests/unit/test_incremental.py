"""Incremental occlusion on tiny seeded networks: the drops equal the brute-force loop, or None."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.attribution.fast import incremental
from cnnviz.attribution.fast.incremental import occlusion_drops, occlusion_plan, supports_incremental
from cnnviz.attribution.perturbation import window_starts
from cnnviz.models.efficientnet_lite import MBConvBlock, SameConv2d, efficientnet_lite


def _seeded(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and non-trivial batch-norm statistics, frozen, eval, channels_last (as the catalog)."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


class LiteLike(nn.Module):
    """The pieces EfficientNet-Lite is made of: SAME stem stride 2, BN, ReLU6, MBConv blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConv2d(3, 8, 3, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(8, eps=1e-3)
        self.act = nn.ReLU6()
        self.blocks = nn.Sequential(
            MBConvBlock(8, 8, 3, 1, 1),  # depthwise only, residual
            MBConvBlock(8, 12, 3, 2, 4),  # expand, stride-2 depthwise
            MBConvBlock(12, 12, 5, 1, 4),  # 5x5 depthwise, residual
            MBConvBlock(12, 16, 5, 2, 4),  # 5x5 stride-2 (asymmetric SAME padding)
            MBConvBlock(16, 16, 3, 1, 4),
        )
        self.head = SameConv2d(16, 32, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(32, eps=1e-3)
        self.head_act = nn.ReLU6()
        self.fc = nn.Linear(32, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = self.head_act(self.head_bn(self.head(self.blocks(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PlainNet(nn.Module):
    """Ordinary torch padding: strided, dilated and grouped convolutions with biases, functional
    rectifiers, an un-folded batch norm (it follows an add), a sum of two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.c4 = nn.Conv2d(8, 16, 4, stride=2, padding="valid")
        self.c5 = nn.Conv2d(16, 16, 3, padding="same", groups=16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = self.bn(torch.relu(self.c2(x)) + self.c3(x))
        x = F.hardtanh(self.c4(x), 0.0, 6.0)
        x = x * 0.5 + self.c5(x)
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    """A broadcast scale from a global pool mid-network: the patch stage must stop before it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.c1(x))
        x = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


class SharedInPlace(nn.Module):
    """An in-place rectifier on a value another op reads too: that op sees the rectified value."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(self.c1(x))
        z = F.relu(y, inplace=True)
        return self.fc((z + y).mean((2, 3)))


class PoolFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.pool(x)).mean((2, 3))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        if y.sum() > 0:
            y = -y
        return y.mean((2, 3))


def _pick(cols: torch.Tensor):
    """Objective.pick for class columns ``cols`` ``[N,T]``."""
    return lambda out, img: out.gather(1, cols[img])


def brute_force(module: nn.Module, x: torch.Tensor, fill: torch.Tensor, window: int, stride: int,
                cols: torch.Tensor, only: list[int] | None = None) -> torch.Tensor:
    """``[N,K,T]``: occlude one window, run the whole network, subtract; windows as window_starts."""
    n, _, h, w = x.shape
    ys, xs = window_starts(h, window, stride), window_starts(w, window, stride)
    with torch.no_grad():
        base = module(x).gather(1, cols)
        drops = torch.full((n, len(ys) * len(xs), cols.shape[1]), float("nan"))
        for k in range(len(ys) * len(xs)) if only is None else only:
            y0, x0 = int(ys[k // len(xs)]), int(xs[k % len(xs)])
            occ = x.clone()
            occ[:, :, y0:y0 + window, x0:x0 + window] = fill[:, :, y0:y0 + window, x0:x0 + window]
            drops[:, k] = base - module(occ.contiguous(memory_format=torch.channels_last)).gather(1, cols)
    return drops


def _inputs(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=gen)
    fill = torch.randn(n, 3, h, w, generator=gen) * 0.3  # a textured fill (like blur), not just zeros
    return x, fill


def _incremental(module, x, fill, window, stride, cols, batch=5, full_at=incremental.FULL_AT):
    with torch.no_grad():
        base = module(x).gather(1, cols)
    return occlusion_drops(module, x, fill, window, stride, _pick(cols), base, batch, full_at)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(scale, 1.0))


@pytest.fixture(scope="module")
def lite_like():
    return _seeded(LiteLike())


# (height, width, window, stride): square and not, strides that do and do not divide the size
# (the last windows run past the edge and are clipped), stride == window, a window bigger than a side.
GEOMETRIES = [(32, 32, 8, 4), (37, 50, 9, 5), (40, 29, 7, 7), (18, 60, 25, 9), (33, 33, 1, 8)]


@pytest.mark.parametrize("h,w,window,stride", GEOMETRIES)
@pytest.mark.parametrize("full_at", [incremental.FULL_AT, 1.0])
def test_lite_like_equals_brute_force(lite_like, h, w, window, stride, full_at):
    x, fill = _inputs(2, h, w)
    cols = torch.tensor([[1, 4], [6, 0]])
    window_ = min(window, h, w)  # as Occlusion clips it
    got = _incremental(lite_like, x, fill, window_, stride, cols, full_at=full_at)
    assert got is not None
    assert got.shape == (2, len(window_starts(h, window_, stride)) * len(window_starts(w, window_, stride)), 2)
    _close(got, brute_force(lite_like, x, fill, window_, stride, cols))


def test_patch_stage_reaches_past_the_stride_two_blocks(lite_like):
    plan = occlusion_plan(lite_like, (64, 64), 8, 4, full_at=0.6)
    assert plan is not None
    # the stem, both stride-2 blocks and the residual adds are computed as patches
    assert len(plan.patch_ops) > 20 and max(plan.fractions.values()) <= 0.6
    assert min(plan.fractions.values()) < 0.1


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_chunking_does_not_change_the_drops(lite_like, batch):
    x, fill = _inputs(2, 36, 36, seed=3)
    cols = torch.tensor([[2], [5]])
    got = _incremental(lite_like, x, fill, 10, 6, cols, batch=batch)
    _close(got, brute_force(lite_like, x, fill, 10, 6, cols))


def test_plain_torch_padding_dilation_groups_and_sums():
    net = _seeded(PlainNet(), seed=1)
    x, fill = _inputs(2, 30, 41, seed=1)
    cols = torch.tensor([[0, 3], [4, 2]])
    for window, stride in [(6, 4), (11, 7)]:
        got = _incremental(net, x, fill, window, stride, cols, full_at=0.9)
        assert got is not None
        _close(got, brute_force(net, x, fill, window, stride, cols))


def test_broadcast_scale_ends_the_patch_stage_and_stays_exact():
    net = _seeded(SqueezeExcite(), seed=2)
    x, fill = _inputs(1, 24, 24, seed=2)
    cols = torch.tensor([[1]])
    plan = occlusion_plan(net, (24, 24), 6, 3, full_at=0.9)
    assert plan is not None and len(plan.patch_ops) == 2  # c1 and its SiLU; the scale runs in full
    _close(_incremental(net, x, fill, 6, 3, cols, full_at=0.9), brute_force(net, x, fill, 6, 3, cols))


def test_in_place_update_of_a_shared_value_runs_in_full():
    net = _seeded(SharedInPlace(), seed=7)
    x, fill = _inputs(1, 20, 20, seed=7)
    cols = torch.tensor([[2]])
    plan = occlusion_plan(net, (20, 20), 4, 4, full_at=0.9)
    assert plan is not None and len(plan.patch_ops) == 2  # the convolutions; the in-place relu runs in full
    _close(_incremental(net, x, fill, 4, 4, cols, full_at=0.9), brute_force(net, x, fill, 4, 4, cols))


def test_torchvision_resnet_uses_the_patch_stage_up_to_the_max_pool():
    torchvision = pytest.importorskip("torchvision")
    net = _seeded(torchvision.models.resnet18(num_classes=10), seed=4)  # in-place ReLUs left on
    x, fill = _inputs(1, 64, 64, seed=4)
    cols = torch.tensor([[3]])
    plan = occlusion_plan(net, (64, 64), 16, 16)
    assert plan is not None and 1 <= len(plan.patch_ops) <= 3
    _close(_incremental(net, x, fill, 16, 16, cols), brute_force(net, x, fill, 16, 16, cols))


def test_torchvision_mobilenet_v2_runs_as_patches_to_its_last_blocks():
    torchvision = pytest.importorskip("torchvision")
    net = _seeded(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.35), seed=5)
    x, fill = _inputs(1, 64, 64, seed=5)
    cols = torch.tensor([[7]])
    plan = occlusion_plan(net, (64, 64), 12, 10, full_at=0.9)
    assert plan is not None and len(plan.patch_ops) > 30
    _close(_incremental(net, x, fill, 12, 10, cols, full_at=0.9), brute_force(net, x, fill, 12, 10, cols))


@pytest.mark.parametrize("net", [PoolFirst(), Branchy()], ids=["max-pool-first", "untraceable"])
def test_unsupported_models_get_none(net):
    net = _seeded(net)
    x, fill = _inputs(1, 16, 16)
    assert not supports_incremental(net)
    assert _incremental(net, x, fill, 4, 4, torch.tensor([[0]])) is None


def test_no_gain_at_this_size_gets_none(lite_like):
    # a window as big as the image: the very first patch is the whole map
    x, fill = _inputs(1, 16, 16)
    assert supports_incremental(lite_like)
    assert _incremental(lite_like, x, fill, 16, 8, torch.tensor([[0]])) is None


def test_a_plan_that_disagrees_with_the_module_is_dropped(lite_like, monkeypatch):
    x, fill = _inputs(1, 20, 20, seed=5)
    cols = torch.tensor([[0]])
    plan = occlusion_plan(lite_like, (20, 20), 4, 4, full_at=0.8)
    assert plan is not None
    op = plan.patch_ops[0]
    right = op.fn
    monkeypatch.setattr(op, "fn", lambda t: right(t) * 1.5)  # a wrong patch rule for the stem
    monkeypatch.setattr(plan, "verified", False)
    monkeypatch.setattr(plan, "broken", False)  # (restored afterwards: the cached plan stays usable)
    assert _incremental(lite_like, x, fill, 4, 4, cols, full_at=0.8) is None
    assert plan.broken


def test_real_lite_architecture_with_random_weights():
    net = _seeded(efficientnet_lite("efficientnet-lite0", num_classes=6), seed=6)
    x, fill = _inputs(1, 48, 64, seed=6)
    cols = torch.tensor([[2, 5]])
    got = _incremental(net, x, fill, 12, 11, cols, batch=8, full_at=0.7)
    assert got is not None
    _close(got, brute_force(net, x, fill, 12, 11, cols))
