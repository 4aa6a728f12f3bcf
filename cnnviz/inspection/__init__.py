"""Model internals: filters, activations (inline); collections, top patches, neighbours (jobs)."""

from .activations import ChannelStats, LayerActivations, layer_activations
from .filters import filter_tiles, first_conv

__all__ = ["ChannelStats", "LayerActivations", "filter_tiles", "first_conv", "layer_activations"]
