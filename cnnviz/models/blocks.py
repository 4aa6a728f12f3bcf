"""A model's main stages, read off its layer table: what a ``layers: "blocks"`` sweep explains.

The rule, for any convolutional network whose table the dry run filled in:

1. candidates are the modules named with at most two parts (``layer1``, ``_blocks.3``,
   ``features.4``, ``act_stem``): the network's top-level modules and the direct children of its
   top-level containers. Deeper modules are the insides of a block;
2. of those, the ones with a spatial grid that reaches the logits, not pass-through modules
   (dropout, identity, pooling to 1x1), and not after the default target layer (a 1x1 logits
   convolution is not a stage);
3. consecutive candidates whose outputs have the same shape (channels and grid) form one stage;
   its last module in execution order stands for it. A container and its last child return the
   very same tensor, and the container finishes last, so a stage is named by its container
   where there is one (``layer1`` of a ResNet, not ``layer1.1``);
4. the default target layer ends the list (it is the usual single-layer CAM).

For EfficientNet-Lite0 this gives the stem, the last block of each of its seven stages and the
head; for a torchvision ResNet the stem's ReLU and ``layer1`` .. ``layer4``. A transformer whose
blocks all keep one token grid is one stage, its last block.
"""

from __future__ import annotations

from .layers import PASS_THROUGH, LayerInfo
from .loaded import LoadedModel


def _shape_key(li: LayerInfo) -> tuple[int | None, tuple[int, int] | None]:
    return li.channels, li.grid_hw


def main_blocks(model: LoadedModel) -> list[str]:
    """The names of ``model``'s main stages, in execution order (the rule in the module docstring)."""
    ordered = sorted((li for li in model.layers if li.output_shape is not None), key=lambda li: li.order)
    default = model.layer(model.default_layer) if model.default_layer and model.has_layer(model.default_layer) \
        else None
    cands = [li for li in ordered if li.name.count(".") <= 1 and li.grid is not None and li.hookable
             and li.kind not in PASS_THROUGH and li.feeds_head is not False
             and (default is None or li.order <= default.order)]
    out: list[LayerInfo] = []
    for li in cands:
        if out and _shape_key(out[-1]) == _shape_key(li):
            out[-1] = li
        else:
            out.append(li)
    names = [li.name for li in out]
    if default is not None:
        same = {li.name for li in ordered if li.tensor_group == default.tensor_group and li.tensor_group >= 0}
        if names and (names[-1] in same or _shape_key(out[-1]) == _shape_key(default)):
            names[-1] = default.name
        elif default.name not in names:
            names.append(default.name)
    return names
