"""A Keras layer LiteRT cannot convert (``erf`` has no LiteRT builtin), for the export tests.

Importing this module registers the layer, so a ``.keras`` file holding it loads in safe mode;
``python tests/unconvertible_layer.py ARGS`` runs ``python -m export ARGS`` with it registered.
"""

import runpy
import sys

import keras


@keras.saving.register_keras_serializable(package="ardir_tf_tests")
class Erf(keras.layers.Layer):
    """``erf(x)`` elementwise (ONNX has Erf; LiteRT has no builtin for it)."""

    def call(self, x):
        return keras.ops.erf(x)


if __name__ == "__main__":
    sys.argv = ["export", *sys.argv[1:]]
    runpy.run_module("export", run_name="__main__", alter_sys=True)
