"""The model-parameter randomization test's stages, and randomized copies that never touch the served model.

Adebayo et al. re-initialize a network's weights from the logits down, one stage at a time
(*cascading*), and one stage alone (*independent*), and ask whether an explanation changes. Both
need copies of the network: :func:`served_copy` takes one deep copy of the served module (its
hooks dropped) and :func:`randomized_copy` copies that again with some stages re-initialized, so
requests answered from the served module meanwhile see exactly the weights they always did.

A stage is re-initialized as PyTorch initializes a fresh layer (``reset_parameters``: uniform in
+-1/sqrt(fan_in) for convolutions and linear layers, unit scale and zero shift for norms), drawn
from a generator seeded by the stage's module names, so a stage gets the same random weights in
the cascading and the independent run, and the process's global random state is left alone.

The *main stages* of a network (:func:`main_stages`): its parameterized top-level children, a
container of blocks (``nn.ModuleList`` / ``nn.Sequential``) opened into its blocks, in execution
order; consecutive pieces with the same output shape (a norm after its convolution, the blocks
of one resolution and width) form one stage, and the classifier is always a stage of its own.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..attribution.fast.folded import keep_unfolded
from ..errors import EngineError, closest
from ..models import LoadedModel

_CONTAINERS = (nn.ModuleList, nn.Sequential)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Stage:
    """A named group of modules randomized together (names as ``named_modules`` gives them)."""

    name: str
    modules: tuple[str, ...]


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _order(model: LoadedModel, name: str) -> int:
    """Execution order of a module: its own entry in the layer table, else its first descendant's."""
    if model.has_layer(name):
        return model.layer(name).order
    orders = [li.order for li in model.layers if li.name.startswith(name + ".")]
    return min(orders) if orders else 10 ** 9


def _shape(model: LoadedModel, name: str) -> tuple[int, ...] | None:
    return model.layer(name).output_shape if model.has_layer(name) else None


def _join(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    first, last = names[0], names[-1]
    head, _, tail = last.rpartition(".")
    if head and first.startswith(head + "."):
        return f"{first}-{tail}"
    return f"{first}..{last}"


def main_stages(model: LoadedModel) -> list[Stage]:
    """The network's main stages, input side first (see the module docstring)."""
    pieces: list[str] = []
    for name, child in model.module.named_children():
        if not _has_params(child):
            continue
        inner = [f"{name}.{n}" for n, c in child.named_children() if _has_params(c)]
        if isinstance(child, _CONTAINERS) and len(inner) >= 2:
            pieces += inner
        else:
            pieces.append(name)
    if not pieces:
        raise EngineError("nothing-to-randomize", f"model {model.name} has no parameters to randomize",
                          model=model.name)
    pieces.sort(key=lambda n: _order(model, n))
    groups: list[list[str]] = []
    for i, name in enumerate(pieces):
        last_piece = i == len(pieces) - 1
        module = model.module.get_submodule(name)
        if groups and not last_piece and (
                isinstance(module, _NORMS) or (_shape(model, name) is not None
                                               and _shape(model, name) == _shape(model, groups[-1][-1]))):
            groups[-1].append(name)
        else:
            groups.append([name])
    return [Stage(_join(g), tuple(g)) for g in groups]


def named_stages(model: LoadedModel, names: list[str]) -> list[Stage]:
    """Stages of one module each, as a request names them, in execution order; unknown names refused."""
    known = {n for n, m in model.module.named_modules() if n and _has_params(m)}
    for n in names:
        if n not in known:
            raise EngineError("unknown-stage", f"model {model.name} has no module {n!r} with parameters",
                              closest(n, sorted(known)), model=model.name)
    return [Stage(n, (n,)) for n in sorted(dict.fromkeys(names), key=lambda n: _order(model, n))]


def served_copy(model: LoadedModel) -> nn.Module:
    """A deep copy of the served module, without the hooks a concurrent explanation may have installed."""
    twin = copy.deepcopy(model.module)
    for m in twin.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
            hooks.clear()
    return twin


def _seed(seed: int, stage: Stage) -> int:
    digest = hashlib.sha256(f"{seed}:{','.join(stage.modules)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def _reinit(module: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default initialization of every layer under ``module``, from ``gen``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                m.weight.uniform_(-bound, bound, generator=gen)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=gen)
            elif isinstance(m, _NORMS):
                m.reset_parameters()
            elif not list(m.children()) and any(True for _ in m.parameters(recurse=False)):
                for p in m.parameters(recurse=False):  # another parametrized leaf: small uniform noise
                    p.uniform_(-0.05, 0.05, generator=gen)


def randomized_copy(pristine: nn.Module, stages: list[Stage], seed: int = 0) -> nn.Module:
    """A deep copy of ``pristine`` with every module of ``stages`` re-initialized (seeded per stage)."""
    twin = copy.deepcopy(pristine)
    for stage in stages:
        gen = torch.Generator().manual_seed(_seed(seed, stage))
        for name in stage.modules:
            _reinit(twin.get_submodule(name), gen)
    return twin


def with_module(model: LoadedModel, module: nn.Module) -> LoadedModel:
    """``model`` (preprocessing, labels, layer table) around another copy of its network (run unfolded)."""
    return replace(model, module=keep_unfolded(module.to(model.device)))
