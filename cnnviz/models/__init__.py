"""Models: catalog, weights from local files, preprocessing, layer table, labels."""

from .catalog import (
    DEFAULT_MODEL,
    Catalog,
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    UnknownModelError,
    load_model,
    read_state_dict,
    specs_from_file,
    validate_layer,
)
from .layers import LayerInfo, default_target_layer, layer_table
from .preprocess import Preprocessing

__all__ = [
    "DEFAULT_MODEL", "Catalog", "LayerInfo", "LoadedModel", "ModelLoadError", "ModelSpec", "Preprocessing",
    "UnknownModelError", "default_target_layer", "layer_table", "load_model", "read_state_dict",
    "specs_from_file", "validate_layer",
]
