"""An exported bundle at run time: the SavedModel, the ONNX model, the card and the example images.

Uses TensorFlow, onnxruntime, NumPy and Pillow; of this project the image loader
:mod:`export.images` and the model-file opener :mod:`export.classifiers` (both copied into the
bundle), and of the library only its attacks package (:mod:`ardir_tf.attacks`, for Square on the
quantized files) and its quiet start (:mod:`ardir_tf.cli`): never its models, trainers, data or the
exporter, and no Keras source of the model. What is served and attacked with gradients is what the
bundle holds. The quantized files of ``export --quantize`` (``model_int8.tflite`` etc., listed in
the card) are opened beside the float model when present (LiteRT files need the ``ai-edge-litert``
package): the page shows how they classify the same clean and adversarial images, and attacks them
with Square (score-based: their runtimes give no gradients) through the files' own runtimes.

Attacks (all untargeted, on the model's own clean prediction, in the card's threat-model norm,
pixels kept in [0, 1]) are the bundle's own SavedModel signatures, traced at export time from the
library's attack functions (see ``export/savedmodel.py``); this module only calls them:

``FGSM``
    the ``fgsm`` signature: one step of size ``eps`` along the sign (L-inf) or the direction (L2)
    of the cross-entropy gradient, no random start (Goodfellow et al. 2015; the protocol's ``fgsm``).
``PGD``
    the ``pgd`` signature: uniform random start in the ball, ``steps`` steps of size ``eps / 4`` on
    the cross-entropy (Madry et al. 2018; ``steps=20`` is the card's ``pgd20``).
``CW``
    the ``cw`` signature: the same PGD on the Carlini-Wagner margin ``max_{j != y} z_j - z_y``
    (clamped at 50; ``steps=30`` is the protocol's ``cw``).

``Square`` (on a quantized file)
    the library's Square attack (Andriushchenko et al. 2020,
    :class:`ardir_tf.attacks.autoattack.Square`) against the file's own logits, ties accepted (the
    quantized logits are flat between steps), at most :data:`MAX_SQUARE_QUERIES` queries per request.

The random start (and Square's random search) is drawn from a fixed seed (:data:`SEED`), so the
same request gives the same images. A bundle exported before these signatures existed is refused
with a one-line :class:`BundleError` that says to export it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
from typing import Any, Sequence

import numpy as np

from export import images

ATTACKS = ("FGSM", "PGD", "CW")
#: Upper bound of ``steps`` accepted by the demo (the signature allows 1000; a demo request must
#: stay short).
MAX_STEPS = 100
#: Largest upload accepted, in bytes and in pixels (width x height, checked before decoding).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
#: Step size of PGD and CW as a fraction of eps (the evaluation protocol's).
STEP_FRACTION = 0.25
#: Stateless seed of the random start of PGD and CW.
SEED = (0, 0)
#: Most Square queries of one demo request (the export's protocol uses 1,000 per image).
MAX_SQUARE_QUERIES = 2000
#: Queries per compiled Square call: the request stops within this many queries of the flip.
SQUARE_CHUNK = 25
#: The SavedModel signature of each attack (bundles exported before them lack them).
ATTACK_SIGNATURES = {"FGSM": "fgsm", "PGD": "pgd", "CW": "cw"}
REQUIRED_FILES = ("model_card.json", "model.onnx", os.path.join("saved_model", "saved_model.pb"))


class BundleError(ValueError):
    """A directory that is not a usable export bundle (one-line message)."""


class InputError(ValueError):
    """A request the demo refuses (bad image, eps or steps); the message is shown to the user."""


# --------------------------------------------------------------------------------------- images
def load_image(path: str, shape: Sequence[int], invert: bool = False) -> tuple[np.ndarray, dict]:
    """An upload as the model's input: :func:`export.images.load_image` (the bundle's ``predict.py``
    gives the same array) with the demo's size limits.

    Returns:
        ``(x, info)``: float32 ``[H, W, C]`` in [0, 1] and ``{"size": [w, h], "mode": ...}`` of the
        file.

    Raises:
        InputError: missing, empty, too large or unreadable file, or too many pixels.
    """
    if not path or not os.path.isfile(path):
        raise InputError("No image: pick an example or upload an image file.")
    try:
        return images.load_image(path, shape, invert, max_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_UPLOAD_PIXELS)
    except images.ImageError as err:
        raise InputError(f"Cannot use the uploaded file: {err}.") from None


def to_display(x: np.ndarray, size: int = 224) -> np.ndarray:
    """``[H, W, C]`` in [0, 1] -> uint8 ``[H', W', 3]`` enlarged by nearest neighbour (crisp pixels)."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    factor = max(1, int(size // max(x.shape[0], x.shape[1])))
    x = np.repeat(np.repeat(x, factor, axis=0), factor, axis=1)
    return np.round(x * 255.0).astype(np.uint8)


def perturbation_display(delta: np.ndarray, size: int = 224) -> tuple[np.ndarray, float]:
    """The perturbation amplified to be visible: mid-gray is 0, white/black the largest |change|.

    Returns the image and the amplification factor (display change per unit of pixel change).
    """
    top = float(np.max(np.abs(delta)))
    gain = 0.5 / top if top > 0 else 1.0
    return to_display(0.5 + gain * delta, size), gain


# --------------------------------------------------------------------------------------- bundle
@dataclasses.dataclass(frozen=True)
class Example:
    path: str
    label: int | None
    class_name: str | None


@dataclasses.dataclass
class Prediction:
    probabilities: np.ndarray  # [K]
    class_names: Sequence[str]

    @property
    def index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def label(self) -> str:
        return self.class_names[self.index]

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.index])

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]


def check_bundle(path: str) -> str:
    """The absolute path of an export bundle, or ``BundleError`` saying what is missing."""
    if not path:
        raise BundleError("no export directory given")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise BundleError(f"export directory {path!r} does not exist")
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise BundleError(f"{path!r} is not an export bundle (missing {', '.join(missing)}); "
                          "create one with `python -m export --model=... --out=DIR`")
    return path


def _read_card(path: str) -> dict:
    file = os.path.join(path, "model_card.json")
    try:
        with open(file) as f:
            card = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"cannot read {file!r}: {err}") from None
    if not isinstance(card, dict):
        raise BundleError(f"{file!r} does not hold a JSON object")
    try:
        shape = [int(d) for d in card["input"]["shape"]]
        names = [str(n) for n in card["dataset"]["class_names"]]
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{file!r} lacks input.shape or dataset.class_names") from None
    if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
        raise BundleError(f"{file!r}: unsupported input shape {shape} (need [H, W, 1] or [H, W, 3])")
    if not names:
        raise BundleError(f"{file!r}: empty dataset.class_names")
    return card


class Bundle:
    """One exported model, ready to predict and attack (thread-safe).

    Args:
        path: the export directory (``saved_model/``, ``model.onnx``, ``model_card.json``).
        name: a short display name (default: the card's method and architecture).
    """

    def __init__(self, path: str, name: str | None = None):
        import onnxruntime as ort
        import tensorflow as tf

        self.path = check_bundle(path)
        self.card = _read_card(self.path)
        self.shape = tuple(int(d) for d in self.card["input"]["shape"])
        self.class_names = [str(n) for n in self.card["dataset"]["class_names"]]
        threat = self.card.get("threat_model") or {}
        self.norm = str(threat.get("norm") or "linf")
        if self.norm not in ("linf", "l2"):
            raise BundleError(f"{self.path!r}: unsupported threat-model norm {self.norm!r}")
        default_eps = 0.3 if self.shape[2] == 1 else 8 / 255
        self.epsilon = float(threat.get("epsilon") if threat.get("epsilon") is not None else default_eps)
        method = (self.card.get("method") or {}).get("name") or "model"
        arch = (self.card.get("model") or {}).get("architecture") or ""
        self.name = name or f"{method} {arch}".strip()
        try:
            self._module = tf.saved_model.load(os.path.join(self.path, "saved_model"))
        except Exception as err:  # a damaged SavedModel: TensorFlow's own error, shortened
            raise BundleError(f"cannot load {os.path.join(self.path, 'saved_model')!r}: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        missing = [n for n in ("serving_default", *ATTACK_SIGNATURES.values()) if n not in self._module.signatures]
        if missing:
            raise BundleError(f"{self.path!r} was exported without the signature(s) {', '.join(missing)} that this "
                              "demo calls; export it again: python -m export --model=MODEL.keras --out=DIR --overwrite")
        self._serve = self._module.signatures["serving_default"]
        self._attacks = {method: self._module.signatures[name] for method, name in ATTACK_SIGNATURES.items()}
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # requests run in parallel threads already
            self._onnx = ort.InferenceSession(os.path.join(self.path, "model.onnx"), options,
                                              providers=["CPUExecutionProvider"])
        except Exception as err:
            raise BundleError(f"cannot load {os.path.join(self.path, 'model.onnx')!r}: {err}") from None
        self.quantized = self._quantized()
        # A LiteRT interpreter is not thread-safe: one lock per quantized file, held by every call.
        self._locks = {name: threading.Lock() for name in self.quantized}
        self._square: dict = {}
        self.examples = self._examples()
        self._example_by_digest = {_digest(e.path): e for e in self.examples}
        self._tf = tf

    def _quantized(self) -> dict:
        """``{file name: session}`` of the card's quantized files present in the bundle (a LiteRT
        file is skipped when ``ai-edge-litert`` is not installed)."""
        from export import classifiers

        out = {}
        variants = ((self.card.get("quantization") or {}).get("variants") or {})
        for name, v in variants.items():
            file = os.path.join(self.path, str(v.get("file", "")))
            if name == "float" or not os.path.isfile(file):
                continue
            try:
                out[os.path.basename(file)] = classifiers.open_model(file, num_threads=1)
            except classifiers.ModelFileError as err:
                if "ai-edge-litert" not in str(err):
                    raise BundleError(str(err)) from None
        return out

    # ---------------------------------------------------------------------------- metadata
    def _examples(self) -> list[Example]:
        out = []
        for entry in self.card.get("examples") or []:
            try:
                file = os.path.join(self.path, str(entry["file"]))
            except (KeyError, TypeError):
                continue
            if os.path.isfile(file):
                label = entry.get("label")
                out.append(Example(file, int(label) if label is not None else None,
                                   str(entry.get("class_name", label)) if label is not None else None))
        return out

    def find_example(self, path: str) -> Example | None:
        """The bundle example whose file has the same bytes as ``path`` (an example picked in the page
        arrives as a copy), else ``None``."""
        try:
            return self._example_by_digest.get(_digest(path))
        except OSError:
            return None

    def max_epsilon(self) -> float:
        """Upper end of the demo's eps slider: 0.4 (one-channel images) or 16/255 (colour) for L-inf,
        at least 1.25 x the threat model's eps; 4 x eps for L2."""
        if self.norm == "l2":
            return float(max(4 * self.epsilon, 1.0 if self.shape[2] == 1 else 0.5))
        base = 0.4 if self.shape[2] == 1 else 16 / 255
        return float(min(1.0, max(base, 1.25 * self.epsilon)))

    # ---------------------------------------------------------------------------- inference
    def predict(self, x: np.ndarray) -> np.ndarray:
        """SavedModel probabilities ``[N, K]`` of ``[N, H, W, C]`` images in [0, 1]."""
        out = self._serve(images=self._tf.constant(np.asarray(x, np.float32)))
        return out["probabilities"].numpy()

    def predict_quantized(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``{file name: probabilities [N, K]}`` of each quantized file on ``x``."""
        x = np.asarray(x, np.float32)
        out = {}
        for name, session in self.quantized.items():
            with self._locks[name]:
                out[name] = session.run(["probabilities"], {"images": x})[0]
        return out

    def square_quantized(self, x: np.ndarray, labels: np.ndarray, file: str, epsilon: float,
                         queries: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Square against the quantized file ``file`` (a key of :attr:`quantized`) through its runtime.

        Args:
            x: ``[N, H, W, C]`` images in [0, 1]; labels: ``[N]`` the classes to move away from.
            epsilon: radius in the card's norm; queries: budget per image (the first is the start).

        Returns:
            ``(x_adv, fooled, used)``: the best images found ``[N, H, W, C]``, ``[N]`` bool whether
            the file's answer changed, and the queries spent (within :data:`SQUARE_CHUNK` of the flip).
        """
        from ardir_tf.attacks import primitives
        from ardir_tf.attacks.autoattack import Square

        if file not in self.quantized:
            raise InputError(f"No quantized file {file!r} in this bundle; it has: "
                             f"{', '.join(self.quantized) or 'none'}.")
        session, lock = self.quantized[file], self._locks[file]
        with lock:  # also keeps one request's random stream whole (the generator is reset below)
            key = (file, int(queries))
            if key not in self._square:
                logits = lambda b: session.run(["logits"], {"images": b})[0]  # noqa: E731
                self._square[key] = Square(primitives.numpy_model(logits, len(self.class_names)), norm=self.norm,
                                           queries=int(queries), seed=SEED[0], chunk=SQUARE_CHUNK, accept_ties=True)
            attack = self._square[key]
            attack.rng.reset_from_seed(SEED[0])  # the same request gives the same images
            used = [1]
            x_adv, fooled = attack(np.asarray(x, np.float32), np.asarray(labels, np.int32), float(epsilon),
                                   progress=lambda done: used.append(done))
        return x_adv, fooled, used[-1]

    def predict_onnx(self, x: np.ndarray) -> np.ndarray:
        """ONNX probabilities ``[N, K]`` (the deployed inference path)."""
        return self._onnx.run(["probabilities"], {"images": np.asarray(x, np.float32)})[0]

    # ---------------------------------------------------------------------------- attacks
    def attack(self, x: np.ndarray, labels: np.ndarray, method: str, epsilon: float, steps: int,
               seed: Sequence[int] = SEED) -> np.ndarray:
        """Adversarial versions of ``x`` (``[N, H, W, C]`` in [0, 1]) against ``labels``, computed by
        the bundle's ``fgsm``, ``pgd`` or ``cw`` signature.

        ``method``: ``FGSM`` (``steps`` ignored), ``PGD`` or ``CW``; ``epsilon``: radius in the card's
        norm, pixel units of [0, 1] images; PGD and CW take steps of ``epsilon / 4`` from a random
        start drawn from ``seed`` (two integers).
        """
        tf = self._tf
        if method not in self._attacks:
            raise InputError(f"Unknown attack {method!r}; choose one of {', '.join(ATTACKS)}.")
        args = {"images": tf.constant(np.asarray(x, np.float32)), "labels": tf.constant(np.asarray(labels, np.int32)),
                "epsilon": tf.constant(float(epsilon), tf.float32)}
        if method != "FGSM":
            args.update(step_size=tf.constant(STEP_FRACTION * float(epsilon), tf.float32),
                        steps=tf.constant(int(steps), tf.int32), seed=tf.constant(np.asarray(seed, np.int64)))
        return self._attacks[method](**args)["adversarial_images"].numpy()

    def warm_up(self) -> None:
        """Runs every attack once so that the first request is not slow."""
        x = np.full((1, *self.shape), 0.5, np.float32)
        for method in ATTACKS:
            self.attack(x, np.zeros(1, np.int32), method, 0.01, 1)
        self.predict_onnx(x)

    # ---------------------------------------------------------------------------- robustness
    def accuracy_curve(self, epsilons: Sequence[float], steps: int = 10) -> dict | None:
        """Accuracy of the bundle's example images under PGD-``steps`` at each eps (``None`` without
        labelled examples): ``{"epsilons", "accuracy", "examples", "attack"}``."""
        labelled = [e for e in self.examples if e.label is not None and 0 <= e.label < len(self.class_names)]
        if not labelled:
            return None
        x = np.stack([load_image(e.path, self.shape)[0] for e in labelled])
        y = np.array([e.label for e in labelled], np.int32)
        accuracy = []
        for eps in epsilons:
            x_adv = x if eps == 0 else self.attack(x, y, "PGD", float(eps), steps)
            accuracy.append(float(np.mean(np.argmax(self.predict(x_adv), axis=1) == y)))
        return {"epsilons": [float(e) for e in epsilons], "accuracy": accuracy, "examples": len(labelled),
                "attack": f"PGD-{steps}"}


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --------------------------------------------------------------------------------------- card
def card_robustness(card: dict) -> dict | None:
    """The card's evaluation in a flat form (``None`` without one): ``natural``, ``robust``
    (attack -> accuracy, with ``all``), ``epsilon``, ``norm``, ``examples`` and ``sweep``
    (``[(eps, natural, robust all)]`` or ``[]``)."""
    ev = card.get("evaluation")
    if not isinstance(ev, dict) or ev.get("natural_accuracy") is None:
        return None
    robust = {str(k): float(v) for k, v in (ev.get("robust_accuracy") or {}).items() if _is_number(v)}
    sweep = []
    for entry in ev.get("sweep") or []:
        try:
            r = entry["robust_accuracy"]
            value = r.get("all", min(r.values())) if isinstance(r, dict) else r
            sweep.append((float(entry["epsilon"]), float(entry["natural_accuracy"]), float(value)))
        except (KeyError, TypeError, ValueError):
            continue
    threat = card.get("threat_model") or {}
    return {"natural": float(ev["natural_accuracy"]), "robust": robust,
            "epsilon": float(ev.get("epsilon", threat.get("epsilon") or math.nan)),
            "norm": ev.get("norm") or threat.get("norm") or "linf",
            "examples": ev.get("examples"), "sweep": sorted(sweep)}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
