"""Quantized variants of an export: LiteRT dynamic-range and full-int8 files, an int8 ONNX model.

Modes (``python -m export --quantize=dynamic,int8``):

- ``dynamic``: ``model_dynamic.tflite``, LiteRT dynamic-range quantization (int8 weights, float
  activations; ``tf.lite.Optimize.DEFAULT`` without a representative dataset).
- ``int8``: ``model_int8.tflite``, LiteRT full-integer quantization (int8 weights and activations,
  ``TFLITE_BUILTINS_INT8`` only, so a layer without an int8 kernel is an error rather than a silent
  float fallback), and ``model_int8.onnx``, onnxruntime's static QDQ quantization of
  ``model.onnx`` (int8 per-channel weights, uint8 activations, min-max calibration). Both are
  calibrated on the same sample: the first ``calibration_examples`` images of the training split,
  or an ``.npz`` file of images.

Every file keeps float32 input ``[N, H, W, C]`` in [0, 1] and float32 logits ``[N, K]`` (the
int8 ONNX model also keeps ``probabilities``), so callers use it exactly like the float model.
:func:`verify` checks each file's top-1 agreement with the float Keras model on held-out images.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from typing import Iterator, Sequence

import numpy as np

MODES = ("dynamic", "int8")
#: variant name -> (mode, file name, runtime)
VARIANTS = {
    "litert_dynamic": ("dynamic", "model_dynamic.tflite", "LiteRT"),
    "litert_int8": ("int8", "model_int8.tflite", "LiteRT"),
    "onnx_int8": ("int8", "model_int8.onnx", "onnxruntime"),
}
DEFAULT_CALIBRATION_EXAMPLES = 500
MIN_CALIBRATION_EXAMPLES = 10
#: Default least top-1 agreement of a quantized file with the float model on held-out images.
DEFAULT_MIN_AGREEMENT = 0.99


def parse_modes(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"dynamic,int8"`` (or a list) -> ``("dynamic", "int8")``; ``""``/``None``/``"none"`` -> ``()``.

    Raises:
        ValueError: an unknown mode, naming the known ones.
    """
    items = text.split(",") if isinstance(text, str) else list(text or ())
    modes = []
    for item in (str(i).strip().lower() for i in items):
        if not item or item == "none":
            continue
        if item not in MODES:
            raise ValueError(f"unknown quantization mode {item!r}; use any of {', '.join(MODES)} (comma-separated)")
        if item not in modes:
            modes.append(item)
    return tuple(m for m in MODES if m in modes)


def variants(modes: Sequence[str]) -> list[str]:
    """The variant names the ``modes`` produce, in a fixed order."""
    return [name for name, (mode, _, _) in VARIANTS.items() if mode in modes]


def check_calibration(x: np.ndarray, input_shape: Sequence[int], source: str) -> np.ndarray:
    """Validates calibration images: float32 ``[N, H, W, C]`` (``N >= 10``) in [0, 1], matching the model.

    Raises:
        ValueError: a wrong rank or image shape, too few images, or pixels outside [0, 1].
    """
    x = np.asarray(x)
    want = [int(d) for d in input_shape]
    if x.ndim != 4 or list(x.shape[1:]) != want:
        raise ValueError(f"calibration images from {source} have shape {list(x.shape)}; the model takes "
                         f"[N, {', '.join(map(str, want))}]")
    if len(x) < MIN_CALIBRATION_EXAMPLES:
        raise ValueError(f"calibration needs at least {MIN_CALIBRATION_EXAMPLES} images, {source} has {len(x)}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise ValueError(f"calibration images from {source} must be float pixels in [0, 1] "
                         f"(got [{np.nanmin(x):.3g}, {np.nanmax(x):.3g}])")
    return x


def check_options(calibration_examples: int, min_agreement: float, eval_examples: int, queries: int) -> None:
    """Raises a one-line ``ValueError`` for quantization settings that cannot work."""
    if int(calibration_examples) < MIN_CALIBRATION_EXAMPLES:
        raise ValueError(f"--calibration_examples must be at least {MIN_CALIBRATION_EXAMPLES}, got {calibration_examples}")
    if not 0 < float(min_agreement) <= 1:
        raise ValueError(f"--quantize_min_agreement must lie in (0, 1], got {min_agreement}")
    if int(eval_examples) < 0:
        raise ValueError(f"--quantize_eval_examples must be >= 0, got {eval_examples}")
    if int(queries) < 1:
        raise ValueError(f"--square_queries must be at least 1, got {queries}")


def calibration_sample(dataset: str, data_dir: str | None, input_shape: Sequence[int], path: str | None,
                       examples: int) -> tuple[np.ndarray, str]:
    """The calibration images and a description of them: the ``.npz`` file ``path`` if given, else
    the first ``examples`` images of ``dataset``'s training split (never the held-out images)."""
    if path:
        x = load_calibration(path, input_shape)
        return x, f"{len(x)} images from {os.path.basename(path)}"
    from ardir_tf import data

    x, _ = data.load_arrays(dataset, "train", data_dir, examples=int(examples))
    x = check_calibration(x, input_shape, f"the training split of {dataset!r}")
    return x, f"training split of {dataset}, first {len(x)} images"


def load_calibration(path: str, input_shape: Sequence[int]) -> np.ndarray:
    """Calibration images from an ``.npz`` file: its array ``x`` (or its only array), float in [0, 1]
    or uint8 (divided by 255), ``[N, H, W, C]`` (``[N, H, W]`` gets a channel axis)."""
    if not os.path.isfile(path):
        raise ValueError(f"calibration file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "x" in keys:
                x = f["x"]
            elif len(keys) == 1:
                x = f[keys[0]]
            else:
                raise ValueError(f"calibration file {path!r} holds {keys}; name the images 'x'")
    except (OSError, EOFError) as err:
        raise ValueError(f"calibration file {path!r} is not a readable .npz file ({err})") from None
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 3 and len(input_shape) == 3 and int(input_shape[-1]) == 1:
        x = x[..., None]
    return check_calibration(x, input_shape, f"calibration file {path!r}")


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Silences the converters' prints and C++ log lines (stdout and stderr, at the file-descriptor
    level); yields a buffer with what they wrote to Python's stdout."""
    buffer = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(buffer):
                yield buffer
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _converter_message(err: Exception) -> str:
    """The informative line of a TFLite ConverterError (which names the op and carries MLIR noise)."""
    text = str(err)
    for line in text.splitlines():
        if "error:" in line:
            detail = line.split("error:", 1)[1]
            for noise in ("loc(", ):
                if noise in detail and "):" in detail:
                    detail = detail.rsplit("):", 1)[1]
            return " ".join(detail.split())
    return " ".join(text.split())[:300] or type(err).__name__


def convert_litert(model, mode: str, calibration: np.ndarray | None = None) -> bytes:
    """Converts a float32 Keras classifier to a LiteRT flatbuffer.

    Args:
        model: functional Keras model, images float32 ``[N, H, W, C]`` in [0, 1] -> logits.
        mode: ``"dynamic"`` (int8 weights) or ``"int8"`` (int8 weights and activations, float32
            input and output, builtin int8 kernels only).
        calibration: images ``[N, H, W, C]`` for ``"int8"`` (fed one at a time).

    Raises:
        ValueError: the model holds an operation LiteRT cannot convert (or has no int8 kernel for).
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        if calibration is None:
            raise ValueError("int8 quantization needs calibration images")
        cal = np.asarray(calibration, np.float32)

        def representative():
            for i in range(len(cal)):
                yield [cal[i:i + 1]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    try:
        with _quiet():
            return bytes(converter.convert())
    except Exception as err:  # ConverterError, RuntimeError from the calibrator, ...
        raise ValueError(f"cannot convert model {model.name!r} to LiteRT {mode}: {_converter_message(err)}") from None


class _Reader:
    """onnxruntime calibration reader: batches of ``{"images": [B, H, W, C]}``."""

    def __init__(self, x: np.ndarray, batch: int = 32):
        self._batches = [{"images": np.ascontiguousarray(x[i:i + batch], np.float32)} for i in range(0, len(x), batch)]
        self._i = 0

    def get_next(self):
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return self._batches[self._i - 1]

    def rewind(self):
        self._i = 0


def quantize_onnx(float_path: str, out_path: str, calibration: np.ndarray) -> None:
    """Writes onnxruntime's static QDQ int8 quantization of ``float_path`` to ``out_path``
    (per-channel int8 weights, uint8 activations, min-max calibration on ``calibration``).

    Raises:
        ValueError: onnxruntime cannot quantize the model.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    CalibrationDataReader.register(_Reader)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        try:
            with _quiet():
                quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
                quantize_static(prepared, out_path, _Reader(calibration), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as err:
            raise ValueError(f"cannot quantize {os.path.basename(float_path)} with onnxruntime: "
                             f"{' '.join(str(err).split())[:300] or type(err).__name__}") from None
    # quantize_static keeps the graph's metadata_props only partly; copy the float model's over.
    source, quantized = onnx.load(float_path), onnx.load(out_path)
    del quantized.metadata_props[:]
    for entry in source.metadata_props:
        quantized.metadata_props.add(key=entry.key, value=entry.value)
    quantized.doc_string = source.doc_string + " (int8 QDQ, onnxruntime static quantization)"
    onnx.save(quantized, out_path)


def write_variants(model, directory: str, modes: Sequence[str], calibration: np.ndarray | None,
                   float_onnx: str | None = None) -> dict[str, str]:
    """Writes the LiteRT files of ``modes`` into ``directory`` and, given ``float_onnx``, the int8
    ONNX model too (the export converts LiteRT first, so that an unconvertible model fails before
    the float artifacts are built); returns ``{variant name: path}`` of the files written.

    Raises:
        ValueError: a conversion failed (see :func:`convert_litert`, :func:`quantize_onnx`).
    """
    paths = {}
    for name in variants(modes):
        mode, filename, _ = VARIANTS[name]
        path = os.path.join(directory, filename)
        if name.startswith("litert"):
            with open(path, "wb") as f:
                f.write(convert_litert(model, mode, calibration))
        elif float_onnx is not None:
            quantize_onnx(float_onnx, path, calibration)
        else:
            continue
        paths[name] = path
    return paths


def agreement(reference_logits: np.ndarray, logits: np.ndarray, y: np.ndarray) -> dict:
    """Top-1 agreement of ``logits`` with the float model's, and both accuracies, on the same images."""
    ref, got = np.argmax(reference_logits, -1), np.argmax(logits, -1)
    return {"examples": int(len(y)),
            "top1_agreement": float(np.mean(ref == got)) if len(y) else 1.0,
            "top1_mismatches": int(np.sum(ref != got)),
            "float_accuracy": float(np.mean(ref == y)) if len(y) else 0.0,
            "accuracy": float(np.mean(got == y)) if len(y) else 0.0,
            "max_abs_logit_diff": float(np.max(np.abs(reference_logits - logits))) if len(y) else 0.0}


def export_variants(
    model,
    directory: str,
    modes: Sequence[str],
    *,
    calibration: np.ndarray,
    calibration_source: str,
    float_onnx: str,
    x: np.ndarray,
    y: np.ndarray,
    epsilon: float,
    norm: str,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    eval_examples: int = 200,
    queries: int = 1000,
    seed: int = 0,
    autoattack_members: tuple[str, ...] | None = None,
    speed_seconds: float = 2.0,
    log=print,
) -> dict:
    """Writes the int8 ONNX model, then verifies, times and attacks every quantized variant (the
    LiteRT files must already be in ``directory``: :func:`write_variants`); returns the card's
    ``quantization`` section.

    Args:
        model: the float32 Keras classifier.
        directory: where the files go (the export's temporary directory).
        modes: from :func:`parse_modes`.
        calibration: images ``[N, H, W, C]`` in [0, 1] (checked by :func:`check_calibration`).
        calibration_source: how they were chosen, for the card.
        float_onnx: the float ``model.onnx`` (source of the int8 ONNX model and the float speed row).
        x, y: held-out images and labels: all of them for the agreement check, the first
            ``eval_examples`` for the robustness protocol (:mod:`export.quantized_eval`).
        epsilon, norm: the threat model.
        min_agreement: least top-1 agreement with the float model on ``x``.
        eval_examples: images of the robustness protocol (0 skips it).
        queries: Square's query budget.
        seed: attack seed.
        autoattack_members: restrict the float model's AutoAttack (tests only; ``None``: standard).
        speed_seconds: duration of each throughput measurement.
        log: progress lines.

    Raises:
        ValueError: a conversion failed.
        export.verify.VerificationError: a file agrees with the float model on fewer than
            ``min_agreement`` of the images.
    """
    from export import runtimes
    from export.card import sha256
    from export.verify import VerificationError

    import tensorflow as tf

    if not 0 < min_agreement <= 1:
        raise ValueError(f"the least top-1 agreement must lie in (0, 1], got {min_agreement}")
    paths = {name: os.path.join(directory, VARIANTS[name][1]) for name in variants(modes)}
    for name, path in paths.items():
        if name.startswith("onnx"):
            quantize_onnx(float_onnx, path, calibration)
        elif not os.path.isfile(path):
            raise ValueError(f"{VARIANTS[name][1]} was not written; call write_variants first")
    call = tf.function(lambda b: model(b, training=False), reduce_retracing=True)
    ref = np.concatenate([call(tf.constant(x[i:i + 256])).numpy() for i in range(0, len(x), 256)])
    float_file = runtimes.load(float_onnx)
    float_bytes = os.path.getsize(float_onnx)
    rows: dict = {"float": {"file": os.path.basename(float_onnx), "runtime": "onnxruntime", "bytes": float_bytes,
                            "size_ratio": 1.0, **runtimes.speed(float_file, x, seconds=speed_seconds)}}
    failures = []
    files = {}
    for name, path in paths.items():
        mode, filename, runtime = VARIANTS[name]
        clf = runtimes.load(path)
        files[name] = clf
        check = agreement(ref, clf(x), y)
        size = os.path.getsize(path)
        rows[name] = {"file": filename, "runtime": runtime, "mode": mode, "bytes": size, "sha256": sha256(path),
                      "size_ratio": round(size / float_bytes, 4), "verification": check}
        if check["top1_agreement"] < min_agreement:
            failures.append(f"{filename} agrees with the float model on {100 * check['top1_agreement']:.1f}% of "
                            f"{check['examples']} held-out images (< {100 * min_agreement:g}%)")
        log(f"  {filename:<22} {size:>9,} bytes ({100 * size / float_bytes:.1f}% of {os.path.basename(float_onnx)}), "
            f"top-1 agreement {100 * check['top1_agreement']:.1f}% on {check['examples']} held-out images")
    if failures:
        raise VerificationError("quantized export verification failed: " + "; ".join(failures), rows)
    for name, clf in files.items():
        rows[name].update(runtimes.speed(clf, x, seconds=speed_seconds))

    section = {
        "modes": list(modes),
        "calibration": {"examples": int(len(calibration)), "source": calibration_source},
        "min_top1_agreement": float(min_agreement),
        "verification_examples": int(len(x)),
        "speed": {"threads": runtimes.THREADS, "latency": "median of 20 calls at batch 1",
                  "throughput": "images/s over repeated batch-128 calls"},
        "variants": rows,
        "robustness": None,
    }
    if eval_examples:
        from export import quantized_eval as qe

        n = min(int(eval_examples), len(x))
        xe, ye = x[:n], y[:n]
        log(f"robustness protocol on {n} held-out images ({norm} eps={epsilon:g}): float model PGD-{qe.PGD_STEPS}, "
            f"AutoAttack; on each file BPDA (APGD-CE, APGD-T) and Square {queries} queries ...")
        tf_logger = tf.get_logger()
        level = tf_logger.level
        tf_logger.setLevel("ERROR")  # each Square instance retraces per batch size: expected, not news
        try:
            surrogate = None
            if "int8" in modes:
                from export.fake_quant import fake_quantized_copy

                try:
                    surrogate = fake_quantized_copy(model, calibration)
                except Exception as err:  # an architecture clone_model cannot rebuild: skip this one figure
                    log(f"note: no fake-quantized copy of {model.name!r} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200] if str(err) else ''}); its PGD-20 figure is left out")
                if surrogate is not None:
                    scall = tf.function(lambda b: surrogate(b, training=False), reduce_retracing=True)
                    s_top = np.argmax(scall(tf.constant(x)).numpy(), -1)
                    surrogate_agreement = {name: float(np.mean(s_top == np.argmax(files[name](x), -1)))
                                           for name in files}
            start = time.perf_counter()
            side = qe.float_attacks(model, xe, ye, epsilon=epsilon, norm=norm, queries=queries, seed=seed,
                                    autoattack_members=autoattack_members, surrogate=surrogate)
            float_row = qe.summarize_float(side)
            log(f"  float model: robust {100 * float_row['robust']:.1f}% ({time.perf_counter() - start:.0f} s)")
            results = {"float": float_row}
            sources = {"float": model, **({"fakequant": surrogate} if surrogate is not None else {})}
            for name, clf in files.items():
                start = time.perf_counter()
                results[name] = qe.evaluate_file(clf, xe, ye, side, epsilon=epsilon, norm=norm, queries=queries,
                                                 seed=seed, float_gap=float_row["gap"], gradient_sources=sources)
                log(f"  {os.path.basename(clf.path)}: robust {100 * results[name]['robust']:.1f}% "
                    f"({time.perf_counter() - start:.0f} s)")
        finally:
            tf_logger.setLevel(level)
        for name in files:
            if results[name]["warning"]:
                log(f"warning: {VARIANTS[name][1]}: {results[name]['warning']}")
        section["robustness"] = {
            "examples": n, "split": f"test, first {n} images", "epsilon": float(epsilon), "norm": norm,
            "pgd": f"PGD-{qe.PGD_STEPS} on the float model, uniform start, step eps/4, cross-entropy",
            "autoattack": side["autoattack_settings"],
            "square_queries": int(queries), "square_accepts_ties": qe.SQUARE_ACCEPTS_TIES, "seed": int(seed),
            "bpda": qe.bpda_settings(sources),
            "fake_quantized_copy": None if surrogate is None else {
                "attack": f"PGD-{qe.PGD_STEPS} white-box on the fake-quantized float copy (export/fake_quant.py)",
                "top1_agreement_with_files": surrogate_agreement,
                "accuracy_on_its_own_pgd20": side["surrogate_accuracy"]},
            "robust": "per example: correct clean, on every transferred image, under BPDA and after Square",
            "results": results,
        }
    return section
