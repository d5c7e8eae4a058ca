"""An exported bundle at run time: the SavedModel, the ONNX model, the card and the example images.

Only TensorFlow, onnxruntime, NumPy and Pillow are used: nothing of ``ardir_tf`` or ``export`` and
no Keras source of the model, so the demo runs on a bundle copied to a machine without this project.

Attacks (all untargeted, on the model's own clean prediction, in the card's threat-model norm,
pixels kept in [0, 1]):

``FGSM``
    one step of size ``eps`` along the sign (L-inf) or the direction (L2) of the cross-entropy
    gradient, no random start (Goodfellow et al. 2015; the evaluation protocol's ``fgsm``).
``PGD``
    the bundle's own ``attack`` signature: uniform random start in the ball, ``steps`` steps of
    size ``eps / 4`` on the cross-entropy (Madry et al. 2018; ``steps=20`` is the card's ``pgd20``).
``CW``
    PGD on the Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (clamped at 50, the evaluation
    protocol's ``cw``): uniform random start, ``steps`` steps of size ``eps / 4``.

The ``attack`` signature has a fixed step of ``eps / 4``, so it cannot take FGSM's single step of
``eps``; FGSM and CW are therefore written here with ``tf.GradientTape`` through the loaded
``serving_default`` function (gradients flow through a restored SavedModel function).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ATTACKS = ("FGSM", "PGD", "CW")
#: Upper bound of ``steps`` accepted by the demo (the signature allows 1000; a demo request must
#: stay short).
MAX_STEPS = 100
#: Largest upload accepted, in bytes and in pixels (width x height, checked before decoding).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
#: Margin clamp of the CW objective (the evaluation protocol's kappa).
CW_KAPPA = 50.0
REQUIRED_FILES = ("model_card.json", "model.onnx", os.path.join("saved_model", "saved_model.pb"))


class BundleError(ValueError):
    """A directory that is not a usable export bundle (one-line message)."""


class InputError(ValueError):
    """A request the demo refuses (bad image, eps or steps); the message is shown to the user."""


# --------------------------------------------------------------------------------------- images
def _to_unit_array(image: Image.Image, channels: int) -> Image.Image:
    """``image`` converted to 8-bit grayscale (``channels == 1``) or RGB."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit or float images: rescale to 8 bit instead of clipping everything above 255.
        a = np.asarray(image, np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(a.max()), 1.0)
        if image.mode == "F" and a.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, as a browser shows them.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L" if channels == 1 else "RGB")


def load_image(path: str, shape: Sequence[int], invert: bool = False) -> tuple[np.ndarray, dict]:
    """Reads an image file of any size and mode and converts it to the model's input.

    Conversion (the same as the bundle's ``predict.py``): EXIF orientation applied, transparency
    over white, to grayscale or RGB as the model's channels, bilinear resize to ``(H, W)`` (the
    aspect ratio is not kept), pixels / 255; ``invert`` then takes ``1 - x`` (MNIST models saw
    white digits on black).

    Returns:
        ``(x, info)``: float32 ``[H, W, C]`` in [0, 1] and ``{"size": [w, h], "mode": ...}`` of the
        file.

    Raises:
        InputError: missing, empty, too large or unreadable file, or too many pixels.
    """
    h, w, c = (int(d) for d in shape)
    if not path or not os.path.isfile(path):
        raise InputError("No image: pick an example or upload an image file.")
    size = os.path.getsize(path)
    if size == 0:
        raise InputError("The uploaded file is empty.")
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"The uploaded file is too large ({size / 2**20:.1f} MB; the limit is "
                         f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB).")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_UPLOAD_PIXELS:
                raise InputError(f"The image is too large ({width}x{height} pixels; the limit is "
                                 f"{MAX_UPLOAD_PIXELS / 1e6:.0f} million pixels).")
            mode = image.mode
            image.load()
            image = ImageOps.exif_transpose(image)
            converted = _to_unit_array(image, c).resize((w, h), Image.BILINEAR)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("The uploaded file is not an image this demo can read "
                         "(use PNG, JPEG, GIF, BMP, WebP or TIFF).") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"The image is too large: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"The image file is damaged or unsupported ({type(err).__name__}: {err}).") from None
    x = np.asarray(converted, np.float32).reshape(h, w, c) / 255.0
    if invert:
        x = 1.0 - x
    return x, {"size": [int(width), int(height)], "mode": mode}


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
            self._serve = self._module.signatures["serving_default"]
            self._pgd = self._module.signatures["attack"]
        except KeyError as err:
            raise BundleError(f"{self.path!r}: the SavedModel lacks the signature {err}") from None
        except Exception as err:  # a damaged SavedModel: TensorFlow's own error, shortened
            raise BundleError(f"cannot load {os.path.join(self.path, 'saved_model')!r}: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # requests run in parallel threads already
            self._onnx = ort.InferenceSession(os.path.join(self.path, "model.onnx"), options,
                                              providers=["CPUExecutionProvider"])
        except Exception as err:
            raise BundleError(f"cannot load {os.path.join(self.path, 'model.onnx')!r}: {err}") from None
        self.examples = self._examples()
        self._example_by_digest = {_digest(e.path): e for e in self.examples}
        self._tf = tf
        self._build_attacks()

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

    def predict_onnx(self, x: np.ndarray) -> np.ndarray:
        """ONNX probabilities ``[N, K]`` (the deployed inference path)."""
        return self._onnx.run(["probabilities"], {"images": np.asarray(x, np.float32)})[0]

    # ---------------------------------------------------------------------------- attacks
    def _build_attacks(self) -> None:
        tf = self._tf
        serve, norm = self._serve, self.norm
        spec = [tf.TensorSpec([None, *self.shape], tf.float32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)]
        num_classes = len(self.class_names)

        def direction(g):
            if norm == "linf":
                return tf.sign(g)
            flat = tf.reshape(g, [tf.shape(g)[0], -1])
            n = tf.maximum(tf.norm(flat, axis=1), 1e-12)
            return g / tf.reshape(n, [-1, 1, 1, 1])

        def project(x_adv, x, eps):
            d = x_adv - x
            if norm == "linf":
                d = tf.clip_by_value(d, -eps, eps)
            else:
                flat = tf.reshape(d, [tf.shape(d)[0], -1])
                n = tf.maximum(tf.norm(flat, axis=1), 1e-12)
                d = d * tf.reshape(tf.minimum(1.0, eps / n), [-1, 1, 1, 1])
            return tf.clip_by_value(x + d, 0.0, 1.0)

        def random_start(x, eps):
            if norm == "linf":
                return project(x + tf.random.uniform(tf.shape(x), -eps, eps), x, eps)
            u = tf.random.normal(tf.shape(x))
            flat = tf.reshape(u, [tf.shape(u)[0], -1])
            u = u / tf.reshape(tf.maximum(tf.norm(flat, axis=1), 1e-12), [-1, 1, 1, 1])
            d = tf.cast(tf.size(x[0]), tf.float32)
            r = eps * tf.random.uniform([tf.shape(x)[0], 1, 1, 1]) ** (1.0 / d)
            return project(x + r * u, x, eps)

        def ce_loss(x, labels):
            logits = serve(images=x)["logits"]
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

        def margin_loss(x, labels):
            logits = serve(images=x)["logits"]
            onehot = tf.one_hot(labels, num_classes)
            true = tf.reduce_sum(onehot * logits, axis=1)
            other = tf.reduce_max(logits - 1e9 * onehot, axis=1)
            return tf.minimum(other - true, CW_KAPPA)

        def grad(loss_fn, x, labels):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(loss_fn(x, labels))
            # The serving signature takes any shape (to refuse bad ones clearly), so the gradient
            # comes back with an unknown static shape; the attack loops need x's.
            return tf.ensure_shape(tape.gradient(loss, x), x.shape)

        @tf.function(input_signature=spec)
        def fgsm(x, labels, eps, steps):
            del steps
            return project(x + eps * direction(grad(ce_loss, x, labels)), x, eps)

        @tf.function(input_signature=spec)
        def cw(x, labels, eps, steps):
            x_adv = random_start(x, eps)
            for _ in tf.range(steps):
                x_adv = project(x_adv + 0.25 * eps * direction(grad(margin_loss, x_adv, labels)), x, eps)
            return x_adv

        def pgd(x, labels, eps, steps):
            return self._pgd(images=x, labels=labels, epsilon=eps, steps=steps)["adversarial_images"]

        self._attacks = {"FGSM": fgsm, "PGD": pgd, "CW": cw}

    def attack(self, x: np.ndarray, labels: np.ndarray, method: str, epsilon: float, steps: int) -> np.ndarray:
        """Adversarial versions of ``x`` (``[N, H, W, C]`` in [0, 1]) against ``labels``.

        ``method``: ``FGSM`` (``steps`` ignored), ``PGD`` or ``CW``; ``epsilon``: radius in the card's
        norm, pixel units of [0, 1] images.
        """
        tf = self._tf
        if method not in self._attacks:
            raise InputError(f"Unknown attack {method!r}; choose one of {', '.join(ATTACKS)}.")
        out = self._attacks[method](tf.constant(np.asarray(x, np.float32)),
                                    tf.constant(np.asarray(labels, np.int32)),
                                    tf.constant(float(epsilon), tf.float32), tf.constant(int(steps), tf.int32))
        return out.numpy()

    def warm_up(self) -> None:
        """Traces every attack once so that the first request is not slow."""
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
