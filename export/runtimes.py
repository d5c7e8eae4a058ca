"""Run an exported classifier file through its own runtime, without TensorFlow.

:func:`load` opens a ``.tflite`` file with LiteRT (``ai_edge_litert.interpreter.Interpreter``,
XNNPACK on CPU) or a ``.onnx`` file with onnxruntime, and returns a :class:`Classifier`: a
callable ``images float32 [N, H, W, C] in [0, 1] -> logits float32 [N, K]``. The quantized files
keep float32 input and output (they quantize and dequantize inside), so every file is called the
same way. :func:`speed` measures latency at batch 1 and throughput at a larger batch.

This is the only path by which the quantized files are evaluated, attacked (Square, score-based)
and served, so what is measured is what ships.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import numpy as np

#: Threads of each runtime: all cores, like onnxruntime's default.
THREADS = os.cpu_count() or 1


class Classifier:
    """A classifier file behind a numpy callable.

    Attributes:
        path: the file.
        kind: ``"litert"`` or ``"onnx"``.
        input_shape: ``(H, W, C)``.
        num_classes: number of logits.
    """

    def __init__(self, path: str, kind: str, run: Callable[[np.ndarray], np.ndarray], input_shape, num_classes: int):
        self.path, self.kind, self._run = path, kind, run
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)

    def __call__(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Logits ``[N, K]`` (float32) of images ``x`` ``[N, H, W, C]`` in [0, 1], in batches."""
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{os.path.basename(self.path)} takes images of shape [N, {', '.join(map(str, self.input_shape))}], "
                             f"got {list(x.shape)}")
        if not len(x):
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate([self._run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _litert(path: str) -> Classifier:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=THREADS)
    (inp,) = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if len(outputs) != 1 or inp["dtype"] != np.float32:
        raise ValueError(f"{path!r} is not a classifier with one float32 input and one output")
    shape = [int(d) for d in inp["shape_signature"]]
    state = {"batch": None}

    def run(b: np.ndarray) -> np.ndarray:
        if state["batch"] != len(b):  # the batch dimension is dynamic (-1); resize when it changes
            interpreter.resize_tensor_input(inp["index"], [len(b), *shape[1:]])
            interpreter.allocate_tensors()
            state["batch"] = len(b)
        interpreter.set_tensor(inp["index"], b)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(outputs[0]["index"]), np.float32)

    return Classifier(path, "litert", run, shape[1:], int(outputs[0]["shape_signature"][-1]))


def _onnx(path: str) -> Classifier:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    if "logits" not in names:
        raise ValueError(f"{path!r} has no 'logits' output (outputs: {names})")
    logits = next(o for o in session.get_outputs() if o.name == "logits")
    return Classifier(path, "onnx", lambda b: session.run(["logits"], {inp.name: b})[0].astype(np.float32),
                      inp.shape[1:], int(logits.shape[-1]))


def load(path: str) -> Classifier:
    """Opens a ``.tflite`` (LiteRT) or ``.onnx`` (onnxruntime) classifier.

    Raises:
        ValueError: a missing file, another extension, or a file the runtime cannot open.
    """
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".tflite", ".onnx"):
        raise ValueError(f"{path!r}: expected a .tflite or .onnx file")
    try:
        return _litert(path) if ext == ".tflite" else _onnx(path)
    except ValueError:
        raise
    except Exception as err:  # the runtimes raise RuntimeError / their own types for a bad file
        raise ValueError(f"cannot open {path!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def speed(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, batch: int = 128, repeats: int = 20,
          seconds: float = 2.0) -> dict:
    """Latency at batch 1 and throughput at ``batch`` of ``fn`` (images ``[N, H, W, C]`` -> logits).

    Latency: the median of ``repeats`` single-image calls (after two warm-up calls), in ms.
    Throughput: images per second over whole ``batch``-sized calls, repeated for about ``seconds``
    (at least 3 calls, after a warm-up call). ``x`` supplies the images (tiled if fewer than
    ``batch``).
    """
    x = np.ascontiguousarray(x, np.float32)
    one = x[:1]
    for _ in range(2):
        fn(one)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(x[i % len(x):i % len(x) + 1])
        times.append(time.perf_counter() - start)
    big = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    fn(big)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn(big)
        calls += 1
    elapsed = time.perf_counter() - start
    return {"latency_ms_batch1": round(1000 * statistics.median(times), 4),
            "throughput_batch": int(batch),
            "throughput_images_per_s": round(calls * batch / elapsed, 1)}
