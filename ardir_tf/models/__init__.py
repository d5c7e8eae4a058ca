"""Model families with named stages, and the multi-output feature wrapper."""

from ardir_tf.models.features import (
    UnknownLayerError,
    check_layer_names,
    default_ir_layers,
    feature_model,
    layer_names,
    stage_names,
)
from ardir_tf.models.registry import available, get, register

__all__ = [
    "UnknownLayerError",
    "available",
    "check_layer_names",
    "default_ir_layers",
    "feature_model",
    "get",
    "layer_names",
    "register",
    "stage_names",
]
