"""The ONNX artifact: the inference path ``images -> {logits, probabilities}`` converted by tf2onnx.

The graph has one input ``images`` (float32 ``[N, H, W, C]``, pixels in [0, 1], ``N`` dynamic) and
two outputs ``logits`` and ``probabilities`` (float32 ``[N, num_classes]``). onnxruntime checks the
rank, the fixed dimensions and the dtype of the input itself and refuses a mismatch with an
``INVALID_ARGUMENT`` error that names the input and the expected value. The model's ONNX metadata
(``metadata_props``) carries the class names, the input shape and range, so that a deployment can
label predictions even without ``model_card.json``.

(The module is not called ``onnx.py`` so that it can never shadow the ``onnx`` package when a
script in this directory is run directly.)
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

DEFAULT_OPSET = 17
MIN_OPSET = 13


def max_opset() -> int:
    """The highest ONNX opset the installed tf2onnx can emit."""
    import tf2onnx.constants

    return max(tf2onnx.constants.OPSET_TO_IR_VERSION)


def check_opset(opset: int) -> int:
    """Returns ``opset`` if tf2onnx supports it, else raises ``ValueError`` naming the range."""
    top = max_opset()
    if not MIN_OPSET <= int(opset) <= top:
        raise ValueError(f"--onnx_opset must lie in [{MIN_OPSET}, {top}] (what tf2onnx {_tf2onnx_version()} "
                         f"supports), got {opset}")
    return int(opset)


def _tf2onnx_version() -> str:
    import tf2onnx

    return tf2onnx.__version__


def _rename(graph, old: str, new: str) -> None:
    """Renames tensor ``old`` to ``new`` everywhere in an ONNX graph."""
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.name == old:
            info.name = new


def convert(
    model: keras.Model,
    path: str,
    input_shape: Sequence[int],
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, object] | None = None,
):
    """Converts ``model``'s inference path to ONNX and writes it to ``path``.

    Args:
        model: a float32 functional Keras classifier taking [0, 1] images.
        path: the ``.onnx`` file to write.
        input_shape: ``(H, W, C)``; the batch dimension stays dynamic.
        opset: the ONNX opset (see :func:`check_opset`).
        metadata: strings (other values are JSON-encoded) stored as the model's ``metadata_props``.

    Returns:
        The written ``onnx.ModelProto``.
    """
    import onnx
    import tf2onnx

    opset = check_opset(opset)
    spec = [tf.TensorSpec([None, *(int(d) for d in input_shape)], tf.float32, name="images")]

    @tf.function(input_signature=spec)
    def inference(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return {"logits": tf.identity(logits, name="logits"),
                "probabilities": tf.nn.softmax(logits, axis=-1, name="probabilities")}

    # Freeze first: tf2onnx's from_function would turn tensors the model captures by value (e.g. the
    # mean/variance that keras.layers.Normalization keeps as constants) into extra graph inputs.
    concrete = inference.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    output_keys = sorted(concrete.structured_outputs)  # the flattening order of a dict
    (image_input,) = frozen.inputs
    tf_logger = tf.get_logger()
    level = tf_logger.level
    tf_logger.setLevel("ERROR")  # tf2onnx calls TF1 graph utilities that log deprecation warnings
    try:
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=[image_input.name],
            output_names=[t.name for t in frozen.outputs], opset=opset,
        )
    finally:
        tf_logger.setLevel(level)
    _rename(proto.graph, image_input.name, "images")
    for key, tensor in zip(output_keys, frozen.outputs):
        _rename(proto.graph, tensor.name, key)
    names_in = [i.name for i in proto.graph.input]
    names_out = sorted(o.name for o in proto.graph.output)
    if names_in != ["images"] or names_out != ["logits", "probabilities"]:
        raise RuntimeError(f"unexpected ONNX interface: inputs {names_in}, outputs {names_out}")
    proto.producer_name = "ardir_tf export (tf2onnx)"
    proto.doc_string = ("Robust classifier exported by ardir_tf: images float32 [N, H, W, C] in [0, 1] -> "
                        "logits, probabilities [N, classes]")
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key = str(key)
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return proto
