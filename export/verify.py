"""Self-verification of an export: the artifacts must compute what the Keras model computes.

:func:`verify` runs on held-out real images and checks

1. **natural parity**: the SavedModel's ``serving_default`` and the ONNX model (onnxruntime) give
   logits within ``tolerance`` (max absolute difference, default 1e-4) of the Keras model and the
   same top-1 class on every image; the probabilities agree within the same tolerance;
2. **features parity**: the SavedModel's ``features`` signature returns the Keras activations of
   the IR layers (max absolute difference within ``tolerance * max(1, max |activation|)``: these
   tensors are not bounded like logits);
3. **adversarial parity**: PGD adversarial images crafted *on the Keras model* (PGD-20, uniform
   start, step eps/4, cross-entropy, the card's eps and norm: the evaluation protocol's attack)
   are classified identically by the ONNX model and the SavedModel, with logits within
   ``tolerance``;
4. **the attack signature**: the SavedModel's ``attack`` signature returns images inside the
   eps-ball around the inputs and inside [0, 1], and ONNX classifies them as Keras does;
5. **the demo's attack signatures** ``fgsm``, ``pgd`` and ``cw`` return the images that the
   library's attacks compute on the Keras model from the same inputs and seed (at most
   :data:`MAX_DIFFERING_PIXELS` of the pixels may differ by more than ``tolerance``: a gradient
   component within rounding of zero can take the other sign in the exported graph).

A failed check raises :class:`VerificationError` carrying the whole report; the numbers of a
passing run become ``model_card.json["verification"]``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from ardir_tf.attacks.fgsm import fgsm
from ardir_tf.attacks.pgd import pgd
from ardir_tf.models import feature_model
from export.savedmodel import ATTACK_SIGNATURES, ATTACK_STEP_FRACTION

DEFAULT_TOLERANCE = 1e-4
MIN_EXAMPLES = 64
VERIFY_ATTACK_STEPS = 20
SIGNATURE_ATTACK_STEPS = 10
#: Largest fraction of pixels on which an attack signature may differ from the library's attack.
MAX_DIFFERING_PIXELS = 0.01


class VerificationError(RuntimeError):
    """An exported artifact disagrees with the Keras model; ``report`` holds the numbers."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def _batched(fn: Callable[[np.ndarray], object], x: np.ndarray, batch_size: int):
    """Applies ``fn`` to batches of ``x``; concatenates arrays or dicts of arrays."""
    parts = [fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def onnx_session(path: str):
    """An onnxruntime CPU session of ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_outputs(session, x: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """``{"logits", "probabilities"}`` of the ONNX model on ``x``."""
    return _batched(
        lambda b: dict(zip(("logits", "probabilities"),
                           session.run(["logits", "probabilities"], {"images": np.ascontiguousarray(b, np.float32)}))),
        x, batch_size)


def _compare(name: str, ref_logits: np.ndarray, logits: np.ndarray, tolerance: float, failures: list[str],
             probabilities: np.ndarray | None = None) -> dict:
    diff = float(np.max(np.abs(ref_logits.astype(np.float64) - logits))) if len(logits) else 0.0
    same = np.argmax(ref_logits, -1) == np.argmax(logits, -1)
    entry = {
        "max_abs_logit_diff": diff,
        "top1_agreement": float(np.mean(same)) if len(same) else 1.0,
        "top1_mismatches": int(np.sum(~same)),
    }
    if probabilities is not None:
        ref_p = tf.nn.softmax(ref_logits.astype(np.float64), axis=-1).numpy()
        entry["max_abs_probability_diff"] = float(np.max(np.abs(ref_p - probabilities))) if len(logits) else 0.0
        if not entry["max_abs_probability_diff"] <= tolerance:
            failures.append(f"{name}: probabilities differ from the Keras model's by "
                            f"{entry['max_abs_probability_diff']:.3g} > {tolerance:g}")
    if not diff <= tolerance:  # also catches NaN
        failures.append(f"{name}: max |logit difference| {diff:.3g} > tolerance {tolerance:g}")
    if entry["top1_mismatches"]:
        failures.append(f"{name}: top-1 class differs from the Keras model's on {entry['top1_mismatches']} of "
                        f"{len(same)} images")
    return entry


def verify(
    model: keras.Model,
    saved_model_dir: str,
    onnx_path: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    norm: str = "linf",
    ir_layers: Sequence[str] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    attack_steps: int = VERIFY_ATTACK_STEPS,
    signature_examples: int = MIN_EXAMPLES,
    batch_size: int = 128,
    seed: int = 0,
    min_examples: int = MIN_EXAMPLES,
) -> dict:
    """Checks the SavedModel and the ONNX model against ``model`` (see the module docstring).

    Args:
        model: the float32 Keras classifier that was exported.
        saved_model_dir: the exported SavedModel directory.
        onnx_path: the exported ``.onnx`` file.
        x: held-out float32 images ``[N, H, W, C]`` in [0, 1], ``N >= min_examples``.
        y: their int labels ``[N]``.
        epsilon: threat-model radius of the adversarial checks.
        norm: ``"linf"`` or ``"l2"``.
        ir_layers: layer names of the ``features`` signature.
        tolerance: the largest allowed absolute logit (and probability) difference.
        attack_steps: PGD steps of the Keras-made adversarial images.
        signature_examples: images given to the SavedModel's ``attack`` signature.
        batch_size: examples per batch.
        seed: seed of the Keras-side attack's random start.
        min_examples: the fewest images a verification may use.

    Returns:
        The report dict (``passed`` is ``True``).

    Raises:
        ValueError: fewer than ``min_examples`` images.
        VerificationError: an artifact disagrees with ``model``.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    if len(x) < min_examples:
        raise ValueError(f"verification needs at least {min_examples} held-out images, got {len(x)}")
    failures: list[str] = []
    report: dict = {"examples": int(len(x)), "tolerance": float(tolerance)}

    call = tf.function(lambda b: model(b, training=False), reduce_retracing=True)
    keras_logits = _batched(lambda b: call(tf.constant(b)).numpy(), x, batch_size)
    loaded = tf.saved_model.load(saved_model_dir)
    serve = loaded.signatures["serving_default"]
    session = onnx_session(onnx_path)

    def saved(b: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in serve(images=tf.constant(b)).items()}

    # 1. natural images
    sm = _batched(saved, x, batch_size)
    ox = onnx_outputs(session, x, batch_size)
    report["natural"] = {
        "keras_accuracy": float(np.mean(np.argmax(keras_logits, -1) == y)),
        "saved_model": _compare("saved_model (natural)", keras_logits, sm["logits"], tolerance, failures,
                                sm["probabilities"]),
        "onnx": _compare("onnx (natural)", keras_logits, ox["logits"], tolerance, failures, ox["probabilities"]),
    }

    # 2. internal representations
    if ir_layers:
        fmodel = feature_model(model, list(ir_layers))
        fcall = tf.function(lambda b: fmodel(b, training=False), reduce_retracing=True)
        n = min(len(x), batch_size)
        ref = [t.numpy() for t in fcall(tf.constant(x[:n]))[1:]]
        got = {k: v.numpy() for k, v in loaded.signatures["features"](images=tf.constant(x[:n])).items()}
        layers = {}
        for name, r in zip(ir_layers, ref):
            g = got.get(name)
            if g is None or g.shape != r.shape:
                failures.append(f"features: layer {name!r} missing or of shape "
                                f"{None if g is None else g.shape} instead of {r.shape}")
                continue
            peak = float(np.max(np.abs(r))) if r.size else 0.0
            scale = max(1.0, peak)
            d = float(np.max(np.abs(r - g))) if r.size else 0.0
            layers[name] = {"shape": list(r.shape[1:]), "max_abs_diff": d, "max_abs_activation": peak}
            if not d <= tolerance * scale:
                failures.append(f"features: layer {name!r} differs by {d:.3g} > {tolerance:g} * {scale:.3g}")
        report["features"] = {"examples": n, "layers": layers}

    # 3. adversarial images crafted on the Keras model
    generator = keras.random.SeedGenerator(seed)

    @tf.function(reduce_retracing=True)
    def keras_attack(b, labels):
        return pgd(model, b, labels, epsilon=epsilon, step_size=ATTACK_STEP_FRACTION * epsilon, steps=attack_steps,
                   norm=norm, random_start="uniform", objective="ce", training=False, seed=generator)

    x_adv = np.concatenate([keras_attack(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size])).numpy()
                            for i in range(0, len(x), batch_size)])
    adv_keras = _batched(lambda b: call(tf.constant(b)).numpy(), x_adv, batch_size)
    adv_onnx = onnx_outputs(session, x_adv, batch_size)
    adv_sm = _batched(saved, x_adv, batch_size)
    report["adversarial"] = {
        "attack": f"PGD-{attack_steps} on the Keras model, uniform start, step eps/{1 / ATTACK_STEP_FRACTION:g}, "
                  "cross-entropy",
        "epsilon": float(epsilon),
        "norm": norm,
        "keras_accuracy": float(np.mean(np.argmax(adv_keras, -1) == y)),
        "onnx_accuracy": float(np.mean(np.argmax(adv_onnx["logits"], -1) == y)),
        "onnx": _compare("onnx (adversarial)", adv_keras, adv_onnx["logits"], tolerance, failures),
        "saved_model": _compare("saved_model (adversarial)", adv_keras, adv_sm["logits"], tolerance, failures),
    }

    # 4. the SavedModel's own attack signature
    m = min(len(x), signature_examples)
    xs, ys = x[:m], y[:m]
    out = loaded.signatures["attack"](images=tf.constant(xs), labels=tf.constant(ys),
                                      epsilon=tf.constant(epsilon, tf.float32),
                                      steps=tf.constant(SIGNATURE_ATTACK_STEPS, tf.int32))
    xs_adv = out["adversarial_images"].numpy()
    delta = (xs_adv - xs).reshape(m, -1)
    size = float(np.max(np.abs(delta))) if norm == "linf" else float(np.max(np.linalg.norm(delta, axis=1)))
    within = size <= epsilon * (1 + 1e-5) + 1e-6
    in_range = bool(np.min(xs_adv) >= 0.0 and np.max(xs_adv) <= 1.0)
    if xs_adv.shape != xs.shape or not within or not in_range:
        failures.append(f"attack signature: output of shape {xs_adv.shape}, perturbation {size:.4g} (eps {epsilon:g}), "
                        f"pixels in [{np.min(xs_adv):.3g}, {np.max(xs_adv):.3g}]")
    sig_keras = call(tf.constant(xs_adv)).numpy()
    sig_diff = float(np.max(np.abs(out["logits"].numpy() - sig_keras))) if m else 0.0
    if not sig_diff <= tolerance:
        failures.append(f"attack signature: its logits differ from the Keras model's by {sig_diff:.3g} > {tolerance:g}")
    sig_onnx = onnx_outputs(session, xs_adv, batch_size)["logits"]
    report["attack_signature"] = {
        "examples": m,
        "steps": SIGNATURE_ATTACK_STEPS,
        "max_perturbation": size,
        "within_ball": bool(within),
        "in_unit_range": in_range,
        "natural_accuracy": float(np.mean(np.argmax(keras_logits[:m], -1) == ys)),
        "adversarial_accuracy": float(np.mean(np.argmax(sig_keras, -1) == ys)),
        "signature_logits_max_abs_diff": sig_diff,
        "onnx": _compare("onnx (attack signature images)", sig_keras, sig_onnx, tolerance, failures),
    }

    # 5. fgsm, pgd and cw: the library's attacks on the Keras model, same inputs and seed
    report["attack_signatures"] = _check_attack_signatures(model, loaded, xs, ys, epsilon, norm, tolerance, seed,
                                                           failures)

    report["passed"] = not failures
    if failures:
        report["failures"] = failures
        raise VerificationError("export verification failed: " + "; ".join(failures), report)
    return report


def _check_attack_signatures(model: keras.Model, loaded, x: np.ndarray, y: np.ndarray, epsilon: float, norm: str,
                             tolerance: float, seed: int, failures: list[str]) -> dict:
    """Compares the ``fgsm``, ``pgd`` and ``cw`` signatures with the library's attacks (check 5)."""
    step_size = ATTACK_STEP_FRACTION * epsilon
    stateless = tf.constant([seed, 1], tf.int64)
    xt, yt = tf.constant(x), tf.constant(y)
    args = dict(images=xt, labels=yt, epsilon=tf.constant(epsilon, tf.float32))
    iterative = dict(args, step_size=tf.constant(step_size, tf.float32),
                     steps=tf.constant(SIGNATURE_ATTACK_STEPS, tf.int32), seed=stateless)
    library = {
        "fgsm": lambda: fgsm(model, xt, yt, epsilon=epsilon, norm=norm),
        "pgd": lambda: pgd(model, xt, yt, epsilon=epsilon, step_size=step_size, steps=SIGNATURE_ATTACK_STEPS,
                           norm=norm, random_start="uniform", objective="ce", seed=stateless),
        "cw": lambda: pgd(model, xt, yt, epsilon=epsilon, step_size=step_size, steps=SIGNATURE_ATTACK_STEPS,
                          norm=norm, random_start="uniform", objective="cw", seed=stateless),
    }
    out = {"examples": int(len(x)), "steps": SIGNATURE_ATTACK_STEPS, "step_size": f"{ATTACK_STEP_FRACTION:g}*eps"}
    for name in ATTACK_SIGNATURES:
        got = loaded.signatures[name](**(args if name == "fgsm" else iterative))["adversarial_images"].numpy()
        ref = tf.function(library[name])().numpy()
        diff = np.abs(got - ref)
        differing = float(np.mean(diff > tolerance)) if diff.size else 0.0
        out[name] = {"max_abs_image_diff": float(diff.max()) if diff.size else 0.0, "differing_pixels": differing,
                     "adversarial_accuracy": float(np.mean(np.argmax(model(got, training=False), -1) == y))}
        if got.shape != ref.shape or not differing <= MAX_DIFFERING_PIXELS:
            failures.append(f"{name} signature: {100 * differing:.2f}% of the pixels differ from the library's "
                            f"{name} on the Keras model (allowed {100 * MAX_DIFFERING_PIXELS:g}%)")
    return out


def format_report(report: dict) -> str:
    """A few lines summarising a verification report for the terminal."""
    tol = report["tolerance"]
    lines = [f"verification on {report['examples']} held-out images (tolerance {tol:g}):"]

    def row(label: str, e: dict, n: int) -> str:
        return (f"  {label:<42} max |logit diff| {e['max_abs_logit_diff']:.2e}, "
                f"top-1 agrees {n - e['top1_mismatches']}/{n}")

    n = report["examples"]
    nat = report["natural"]
    lines.append(f"  Keras natural accuracy {100 * nat['keras_accuracy']:.1f}%")
    lines.append(row("saved_model vs Keras, natural", nat["saved_model"], n))
    lines.append(row("onnx vs Keras, natural", nat["onnx"], n))
    if "features" in report:
        for name, e in report["features"]["layers"].items():
            lines.append(f"  {'saved_model features ' + repr(name):<42} max |diff| {e['max_abs_diff']:.2e}")
    adv = report["adversarial"]
    lines.append(row(f"onnx vs Keras, {adv['norm']} eps={adv['epsilon']:g} PGD", adv["onnx"], n))
    lines.append(row(f"saved_model vs Keras, same images", adv["saved_model"], n))
    lines.append(f"  robust accuracy under that PGD: Keras {100 * adv['keras_accuracy']:.1f}%, "
                 f"onnx {100 * adv['onnx_accuracy']:.1f}%")
    sig = report["attack_signature"]
    lines.append(f"  attack signature ({sig['examples']} images, {sig['steps']} steps): perturbation "
                 f"{sig['max_perturbation']:.4g} <= eps, pixels in [0, 1]: {sig['within_ball'] and sig['in_unit_range']}, "
                 f"accuracy {100 * sig['natural_accuracy']:.1f}% -> {100 * sig['adversarial_accuracy']:.1f}%")
    sigs = report.get("attack_signatures")
    if sigs:
        lines.append("  fgsm/pgd/cw signatures vs the library's attacks on Keras (same seed): pixels differing "
                     + ", ".join(f"{n} {100 * sigs[n]['differing_pixels']:.2f}%" for n in ATTACK_SIGNATURES if n in sigs))
    lines.append("  PASSED" if report.get("passed") else "  FAILED: " + "; ".join(report.get("failures", [])))
    return "\n".join(lines)
