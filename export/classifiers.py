"""Open an exported classifier file, ``.onnx`` (onnxruntime) or ``.tflite`` (LiteRT), behind one
interface: NumPy, onnxruntime and ``ai-edge-litert`` only, never TensorFlow.

:func:`open_model` returns an onnxruntime ``InferenceSession`` or a :class:`LiteRTSession`, which
offers the same three methods (``get_inputs``, ``run(names, {"images": x})``, ``get_modelmeta``),
so ``export.predict``, the demo and ``export.runtimes`` call either the same way. The export copies
this file into the bundle (``DIR/classifiers.py``) beside ``predict.py``.
"""

from __future__ import annotations

import os

import numpy as np


class ModelFileError(ValueError):
    """A classifier file that is missing, of an unknown kind, or that its runtime cannot open."""


class LiteRTSession:
    """A LiteRT (``.tflite``) classifier behind the onnxruntime-session methods used here. The
    file's one output is the logits ``[N, K]``; ``"probabilities"`` are their softmax. The batch
    dimension is dynamic (the interpreter is resized when it changes)."""

    def __init__(self, path: str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self._it = Interpreter(model_path=path, num_threads=num_threads)
        (self._in,) = self._it.get_input_details()
        outputs = self._it.get_output_details()
        if len(outputs) != 1 or self._in["dtype"] != np.float32:
            raise ModelFileError(f"{path!r} is not a classifier with one float32 input and one output")
        self._out = outputs[0]
        self._batch = None

    def get_inputs(self):
        shape = [None, *(int(d) for d in self._in["shape_signature"][1:])]
        return [type("Input", (), {"name": "images", "shape": shape})()]

    def get_outputs(self):
        return [type("Output", (), {"name": "logits", "shape": [None, int(self._out["shape_signature"][-1])]})()]

    def get_modelmeta(self):
        return type("Meta", (), {"custom_metadata_map": {}})()

    def run(self, names, feeds):
        x = np.ascontiguousarray(feeds["images"], np.float32)
        if self._batch != len(x):
            self._it.resize_tensor_input(self._in["index"], list(x.shape))
            self._it.allocate_tensors()
            self._batch = len(x)
        self._it.set_tensor(self._in["index"], x)
        self._it.invoke()
        logits = np.array(self._it.get_tensor(self._out["index"]), np.float32)
        out = {"logits": logits}
        if "probabilities" in names:
            z = logits.astype(np.float64)
            e = np.exp(z - z.max(axis=-1, keepdims=True))
            out["probabilities"] = (e / e.sum(-1, keepdims=True)).astype(np.float32)
        return [out[n] for n in names]


def open_model(path: str, num_threads: int | None = None):
    """A :class:`LiteRTSession` for a ``.tflite`` file, else an onnxruntime CPU session.

    Raises:
        ModelFileError: a missing file, ``ai-edge-litert`` not installed for a
            ``.tflite`` file, or a file the runtime cannot load (one line).
    """
    kind = "LiteRT" if path.lower().endswith(".tflite") else "ONNX"
    if not os.path.isfile(path):
        raise ModelFileError(f"{kind} model {path!r} does not exist")
    if kind == "LiteRT":
        try:
            import ai_edge_litert  # noqa: F401
        except ImportError:
            raise ModelFileError("running a .tflite file needs the ai-edge-litert package "
                                 "(pip install ai-edge-litert)") from None
    try:
        if kind == "LiteRT":
            return LiteRTSession(path, num_threads)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    except ModelFileError:
        raise
    except Exception as err:  # the runtimes raise their own exception types
        raise ModelFileError(f"{path!r} is not a loadable {kind} model "
                             f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})") from None
