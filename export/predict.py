"""Classify image files with an exported ONNX model: onnxruntime, Pillow and NumPy only.

Usage::

    python -m export.predict --onnx=DIR/model.onnx IMAGE [IMAGE ...] [--top_k=3] [--json] [--invert]
    python -m export.predict --model=DIR/model_int8.tflite IMAGE ...   # or model_int8.onnx, model.onnx

``--model`` takes any exported classifier file: ``.onnx`` (onnxruntime) or a quantized LiteRT
``.tflite`` (``export --quantize``; needs the ``ai-edge-litert`` package, not TensorFlow).

This file imports no TensorFlow and nothing from this project but the image loader
:mod:`export.images` (Pillow and NumPy), so the export copies both into the bundle
(``DIR/predict.py``, ``DIR/images.py``) where it runs as ``python predict.py --onnx=model.onnx IMAGE``.

Each IMAGE is

* an image file Pillow can read (PNG, JPEG, ...): converted by :func:`export.images.load_image`, the
  loader the demo uses too (EXIF orientation, transparency over white, grayscale or RGB to match the
  model's channels, bilinear resize to the model's height and width, scaled to [0, 1]);
* a ``.npy`` array, used as is (no conversion): ``[H, W]`` (one-channel models), ``[H, W, C]`` or
  ``[N, H, W, C]``, dtype uint8 (0..255) or float with values in [0, 1]. A wrong rank, size,
  channel count, dtype or range is an error.

It prints one line per image: the ``top_k`` classes with their probabilities. Class names come
from ``model_card.json`` beside the ONNX file, else from the ONNX metadata, else the class index.
Bad input prints one ``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np

if __package__:  # python -m export.predict, or imported from the project
    from export import classifiers, images
else:  # the bundle's copy, run as `python predict.py`: images.py and classifiers.py sit beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import classifiers
    import images


class InputError(ValueError):
    """An input the model cannot take; the message says what was expected."""


def model_input_shape(session) -> tuple[int, int, int]:
    """``(H, W, C)`` of the ONNX model's ``images`` input ``[N, H, W, C]``."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InputError(f"expected an ONNX model with one [N, H, W, C] input, got "
                         f"{[(i.name, i.shape) for i in inputs]}")
    dims = inputs[0].shape[1:]
    if not all(isinstance(d, int) for d in dims):
        raise InputError(f"the ONNX model's input has no fixed height/width/channels: {inputs[0].shape}")
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


def check_batch(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Validates an array of images for a model with input ``shape = (H, W, C)``.

    Accepts ``[H, W]`` (one-channel models only), ``[H, W, C]`` or ``[N, H, W, C]``; dtype uint8
    (0..255, divided by 255) or float with values in [0, 1].

    Returns:
        float32 ``[N, H, W, C]`` in [0, 1].

    Raises:
        InputError: wrong rank, size, channels, dtype or value range.
    """
    h, w, c = (int(d) for d in shape)
    expected = f"[N, {h}, {w}, {c}] or [{h}, {w}, {c}]" + (f" or [{h}, {w}]" if c == 1 else "")
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if x.size and not (np.all(np.isfinite(x)) and x.min() >= 0.0 and x.max() <= 1.0):
            raise InputError(f"float pixels must lie in [0, 1], got [{np.nanmin(x):g}, {np.nanmax(x):g}]; "
                             "divide 0..255 pixels by 255")
    else:
        raise InputError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")
    if x.ndim == 2 and c == 1:
        x = x[None, :, :, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InputError(f"images must have shape {expected}, got rank {np.ndim(x)} shape {tuple(np.shape(x))}")
    if x.shape[3] != c:
        raise InputError(f"images must have {c} channel{'s' if c != 1 else ''} (shape {expected}), "
                         f"got {x.shape[3]} (shape {x.shape})")
    if x.shape[1:3] != (h, w):
        raise InputError(f"images must be {h}x{w} pixels (shape {expected}), got {x.shape[1]}x{x.shape[2]}")
    return np.ascontiguousarray(x)


def load_image(path: str, shape: Sequence[int], invert: bool = False) -> np.ndarray:
    """An image file (or ``.npy`` array) as float32 ``[N, H, W, C]`` in [0, 1] for the model.

    Image files are converted by :func:`export.images.load_image` (the demo's loader too);
    ``.npy`` arrays must already match (see :func:`check_batch`). ``invert`` maps ``p -> 1 - p``
    (e.g. a dark digit on white paper for an MNIST model, which saw white digits on black).
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    if path.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InputError(f"{path}: not a readable .npy array ({err})") from None
        try:
            x = check_batch(array, shape)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
    else:
        try:
            pixels, _ = images.load_image(path, shape)
        except images.ImageError as err:
            raise InputError(f"{path}: {err}") from None
        x = pixels[None]
    return 1.0 - x if invert else x


def class_names(onnx_path: str, session) -> list[str] | None:
    """Class names from ``model_card.json`` beside the ONNX file, else from the ONNX metadata."""
    card_path = os.path.join(os.path.dirname(os.path.abspath(onnx_path)), "model_card.json")
    try:
        with open(card_path) as f:
            names = json.load(f)["dataset"]["class_names"]
        return [str(n) for n in names]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return [str(n) for n in json.loads(session.get_modelmeta().custom_metadata_map["class_names"])]
    except (KeyError, ValueError, TypeError):
        return None


def open_session(onnx_path: str):
    """An onnxruntime CPU session, with a one-line error for a missing or invalid file."""
    return open_model(onnx_path)


def open_model(path: str):
    """A session for ``path``: onnxruntime, or LiteRT for a ``.tflite`` file
    (:func:`classifiers.open_model`), with a one-line :class:`InputError` for a bad file."""
    try:
        return classifiers.open_model(path)
    except classifiers.ModelFileError as err:
        raise InputError(str(err)) from None


def probabilities(session, x: np.ndarray) -> np.ndarray:
    """Softmax probabilities ``[N, K]`` of images ``x`` (validated by :func:`check_batch`)."""
    x = check_batch(x, model_input_shape(session))
    (probs,) = session.run(["probabilities"], {"images": x})
    return probs


def top_k(probs: np.ndarray, k: int, names: Sequence[str] | None) -> list[dict]:
    """The ``k`` most probable classes of one probability vector."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": int(i), "name": names[i] if names and i < len(names) else str(int(i)),
             "probability": float(probs[i])} for i in order]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0, or 2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m export.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="the exported model.onnx")
    parser.add_argument("--model", help="any exported classifier file: .onnx or a quantized .tflite")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...) or .npy arrays")
    parser.add_argument("--top_k", type=int, default=3, help="classes to print per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of text lines")
    parser.add_argument("--invert", action="store_true", help="use 1 - pixel (dark ink on a light background)")
    args = parser.parse_args(argv)
    try:
        if args.top_k < 1:
            raise InputError(f"--top_k must be >= 1, got {args.top_k}")
        if bool(args.onnx) == bool(args.model):
            raise InputError("pass exactly one of --onnx and --model")
        model_path = args.model or args.onnx
        session = open_model(model_path)
        shape = model_input_shape(session)
        names = class_names(model_path, session)
        rows = []
        for path in args.images:
            x = load_image(path, shape, invert=args.invert)
            for i, p in enumerate(probabilities(session, x)):
                label = path if len(x) == 1 else f"{path}[{i}]"
                rows.append({"image": label, "top": top_k(p, args.top_k, names)})
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['image']}: " + ", ".join(f"{t['name']} {t['probability']:.4f}" for t in row["top"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
