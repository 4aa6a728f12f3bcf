"""Models: specs (the models file), weights, builders, the catalog, preprocessing, layer table, labels.

Everything a caller needs is importable from here (``from cnnviz.models import Catalog, LoadedModel``).
"""

from .catalog import Catalog, UnknownModelError, default_device, load_model
from .layers import LayerInfo, default_target_layer, layer_table
from .loaded import LoadedModel, validate_layer
from .preprocess import Preprocessing
from .specs import DEFAULT_MODEL, ModelLoadError, ModelSpec, specs_from_file
from .weights import read_state_dict

__all__ = [
    "DEFAULT_MODEL", "Catalog", "LayerInfo", "LoadedModel", "ModelLoadError", "ModelSpec", "Preprocessing",
    "UnknownModelError", "default_device", "default_target_layer", "layer_table", "load_model", "read_state_dict",
    "specs_from_file", "validate_layer",
]
