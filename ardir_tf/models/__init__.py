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

# The shipped families, imported for their @register (after the registry, which they import).
from ardir_tf.models import dm_wide_resnet, mobilenet_v2, resnet, small_cnn, wide_resnet  # noqa: E402,F401  isort: skip

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
