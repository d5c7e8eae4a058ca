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


def load(path: str) -> Classifier:
    """Opens a ``.tflite`` (LiteRT) or ``.onnx`` (onnxruntime) classifier
    (:func:`export.classifiers.open_model`, with :data:`THREADS` threads).

    Raises:
        ValueError: a missing file or one the runtime cannot open (one line).
    """
    from export import classifiers

    session = classifiers.open_model(path, num_threads=THREADS)
    (inp,) = session.get_inputs()
    outputs = {o.name: o for o in session.get_outputs()}
    if "logits" not in outputs:
        raise ValueError(f"{path!r} has no 'logits' output (outputs: {sorted(outputs)})")
    kind = "litert" if isinstance(session, classifiers.LiteRTSession) else "onnx"
    return Classifier(path, kind, lambda b: np.asarray(session.run(["logits"], {inp.name: b})[0], np.float32),
                      inp.shape[1:], int(outputs["logits"].shape[-1]))


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
