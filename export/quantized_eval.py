"""Robustness of the quantized files, measured on the files themselves (``docs/export.md``).

Gradients do not flow through an int8 LiteRT or ONNX file, and quantization can mask gradients
(Bernhard et al. 2019, arXiv:1909.12741), so a quantized file is attacked three ways and every
figure is reported on its own:

1. **clean**: the file's accuracy on the held-out images;
2. **transfer**: the float Keras model's PGD-20 and AutoAttack adversarial images (white-box on the
   float model, :func:`ardir_tf.attacks.pgd`, :class:`ardir_tf.attacks.autoattack.AutoAttack`),
   classified by the file; and, when a ``surrogate`` is given (the fake-quantized copy of
   :mod:`export.fake_quant`), PGD-20 white-box on that copy, classified by the file;
3. **BPDA**: white-box attacks on the file's own computation: AutoAttack's APGD-CE and APGD-T run
   on :func:`ardir_tf.attacks.straight_through` models whose forward pass is the file's logits
   (through its runtime) and whose gradients come from the float model and, when given, the
   fake-quantized copy (one run with each; an image counts as broken if either breaks it).
   Transfer stops at the surrogate's decision boundary; these go on until the file's own decision
   changes;
4. **black-box**: the Square attack (:class:`ardir_tf.attacks.autoattack.Square`, score-based, no
   gradients) run against the file through its own runtime (:mod:`export.runtimes`), with a
   stated query budget, on the images the file classifies correctly. Proposals that leave the
   margin unchanged are accepted (``accept_ties``), so the search crosses the plateaus of a
   quantized file's logits instead of stalling on them.

The file's **robust accuracy** is the per-example minimum: an image counts only if the file
classifies it correctly clean, on every transferred image, under BPDA and after Square. The
float model gets the same figures (white-box PGD-20 and AutoAttack, whose APGD-CE and APGD-T are what BPDA runs on
the files, instead of transfer and BPDA, and Square with the same budget), so each change is
measured against it on the same images.

A warning is raised when a file's gap between black-box and transfer accuracy differs from the
float model's gap (Square accuracy minus white-box accuracy) by more than ``WARN_GAP`` (5
points). With a small query budget Square is weaker than white-box attacks even on the float
model, so the raw gap is compared with that baseline: a file whose attacks disagree much more (or
less) than the float model's is one where transfer or the black-box attack has stopped telling the
truth (gradient masking, or a decision surface quantization moved).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import tensorflow as tf

from ardir_tf.attacks import pgd, primitives, straight_through
from ardir_tf.attacks.autoattack import AutoAttack, Square

PGD_STEPS = 20
PGD_STEP_FRACTION = 0.25  # step eps/4, uniform start: the evaluation protocol's PGD-20
DEFAULT_EXAMPLES = 200
DEFAULT_QUERIES = 1000
WARN_GAP = 0.05
#: Square on the quantized files keeps proposals that leave the margin unchanged (their logits are flat).
SQUARE_ACCEPTS_TIES = True
#: The AutoAttack members run through each file's straight-through (BPDA) models: the gradient
#: attacks (FAB-T also needs gradients but adds little after them and costs as much again; Square
#: runs on the file separately).
BPDA_MEMBERS = ("apgd-ce", "apgd-t")
BPDA_STEPS = 100


def bpda_settings(sources, steps: int = BPDA_STEPS) -> dict:
    """The BPDA attack's settings as the card records them (AutoAttack's settings of its members)."""
    members = AutoAttack(None, attacks=BPDA_MEMBERS, apgd_steps=steps).settings()
    return {**{k: v for k, v in members.items() if not k.startswith(("square", "fab"))},
            "model": "straight-through: the file's logits forward, the gradient source's gradients backward "
                     "(ardir_tf.attacks.straight_through)", "gradient_sources": sorted(sources)}


def square(model: Callable, x: np.ndarray, y: np.ndarray, *, epsilon: float, norm: str, queries: int, seed: int,
           batch_size: int = 500) -> np.ndarray:
    """``[N]`` bool: the images Square (``queries`` queries, ties accepted) did *not* break. Images
    ``model`` misclassifies are broken by its first query."""
    attack = Square(model, norm=norm, queries=queries, seed=seed, accept_ties=SQUARE_ACCEPTS_TIES)
    survived = np.ones(len(x), bool)
    for i in range(0, len(x), batch_size):
        _, broken = attack(x[i:i + batch_size], y[i:i + batch_size], float(epsilon))
        survived[i:i + batch_size] = ~broken
    return survived


def float_attacks(model, x: np.ndarray, y: np.ndarray, *, epsilon: float, norm: str, queries: int, seed: int = 0,
                  autoattack_members: tuple[str, ...] | None = None, surrogate=None, batch_size: int = 200) -> dict:
    """The float Keras model's side: its adversarial images and per-example results.

    Returns ``{"x_pgd20", "x_autoattack"`` (``[N, H, W, C]``: the adversarial image where the
    attack found one, else the clean image), ``"correct"``: ``{"clean", "pgd20", "autoattack",
    "square"}`` of ``[N]`` bool, and ``"autoattack_settings"}``. AutoAttack is the standard version
    with Square at ``queries`` queries (``autoattack_members`` restricts it, for tests). With a
    ``surrogate`` (a differentiable stand-in of the quantized files) it also holds
    ``"x_fakequant_pgd20"`` (PGD-20 white-box on the surrogate) and ``"surrogate_accuracy"`` (the
    surrogate's own accuracy on those images).
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    generator = tf.random.Generator.from_seed(seed)

    def pgd20(net):
        attack = tf.function(lambda b, labels, key: pgd(
            net, b, labels, epsilon=epsilon, step_size=PGD_STEP_FRACTION * epsilon, steps=PGD_STEPS, norm=norm,
            random_start="uniform", objective="ce", training=False, seed=key), reduce_retracing=True)
        return np.concatenate([
            attack(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]),
                   generator.make_seeds(1)[:, 0]).numpy() for i in range(0, len(x), batch_size)])

    x_pgd = pgd20(model)
    call = tf.function(lambda b: model(b, training=False), reduce_retracing=True)
    kwargs = {"attacks": autoattack_members} if autoattack_members else {}
    aa = AutoAttack(model, norm=norm, square_queries=queries, batch_size=batch_size, seed=seed, **kwargs)
    result = aa.run(x, y, epsilon)
    predict = lambda a: np.concatenate([np.argmax(call(tf.constant(a[i:i + batch_size])).numpy(), -1)  # noqa: E731
                                        for i in range(0, len(a), batch_size)])
    extra = {}
    if surrogate is not None:
        x_fq = pgd20(surrogate)
        scall = tf.function(lambda b: surrogate(b, training=False), reduce_retracing=True)
        extra = {"x_fakequant_pgd20": x_fq, "surrogate_accuracy": float(np.mean(np.concatenate([
            np.argmax(scall(tf.constant(x_fq[i:i + batch_size])).numpy(), -1)
            for i in range(0, len(x), batch_size)]) == y))}
    return {
        **extra,
        "x_pgd20": x_pgd,
        "x_autoattack": result.x_adv,
        "correct": {
            "clean": predict(x) == y,
            "pgd20": predict(x_pgd) == y,
            "autoattack": result.robust.copy(),
            "square": square(model, x, y, epsilon=epsilon, norm=norm, queries=queries, seed=seed),
        },
        "autoattack_settings": aa.settings(),
    }


def _rates(correct: Mapping[str, np.ndarray]) -> dict:
    return {k: float(np.mean(v)) if len(v) else 0.0 for k, v in correct.items()}


def summarize_float(side: dict) -> dict:
    """The float model's figures: each accuracy, ``robust`` (per-example minimum over clean, PGD-20,
    AutoAttack and Square) and ``gap`` (Square accuracy minus the white-box accuracy)."""
    c = side["correct"]
    white = c["clean"] & c["pgd20"] & c["autoattack"]
    out = _rates(c)
    out["white_box"] = float(np.mean(white))
    out["robust"] = float(np.mean(white & c["square"]))
    out["gap"] = out["square"] - out["white_box"]
    return out


def evaluate_file(classifier, x: np.ndarray, y: np.ndarray, side: dict, *, epsilon: float, norm: str,
                  queries: int, seed: int = 0, float_gap: float | None = None,
                  gradient_sources: Mapping[str, Callable] | None = None, bpda_steps: int = BPDA_STEPS) -> dict:
    """Clean, transfer, BPDA and black-box accuracy of one file (a :class:`export.runtimes.Classifier`).

    Args:
        classifier: ``images [N, H, W, C] -> logits [N, K]`` through the file's runtime.
        x, y: the held-out images ``[N, H, W, C]`` in [0, 1] and labels ``[N]``.
        side: :func:`float_attacks` on the same images.
        epsilon, norm: the threat model.
        queries: Square's query budget per image.
        seed: the seed of Square and of BPDA's attacks.
        float_gap: the float model's ``gap`` (:func:`summarize_float`), for the warning.
        gradient_sources: ``{name: differentiable model}`` whose gradients BPDA follows (the float
            model, the fake-quantized copy); ``None`` or empty leaves BPDA out.
        bpda_steps: the iterations of BPDA's APGD-CE and APGD-T.

    Returns:
        ``{"clean", "transfer_pgd20", "transfer_autoattack", ["transfer_fakequant_pgd20",]
        "transfer", ["bpda_<source>", ..., "bpda",] "square", "robust"}`` accuracies (``transfer``:
        every transfer per example; ``bpda``: every gradient source per example; ``robust``: the
        per-example minimum of everything), ``"gap"`` (square minus transfer) and ``"warning"``
        (a sentence or ``None``).
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    predict = lambda a: np.argmax(classifier(a), -1)  # noqa: E731
    clean = predict(x) == y
    t_pgd = predict(side["x_pgd20"]) == y
    t_aa = predict(side["x_autoattack"]) == y
    survived = np.zeros(len(x), bool)
    idx = np.flatnonzero(clean)
    num_classes = int(getattr(classifier, "num_classes", 0) or classifier(x[:1]).shape[-1])
    if len(idx):
        survived[idx] = square(primitives.numpy_model(classifier, num_classes), x[idx], y[idx], epsilon=epsilon,
                               norm=norm, queries=queries, seed=seed)
    rates = {"clean": clean, "transfer_pgd20": t_pgd, "transfer_autoattack": t_aa}
    transfer = clean & t_pgd & t_aa
    if "x_fakequant_pgd20" in side:
        rates["transfer_fakequant_pgd20"] = predict(side["x_fakequant_pgd20"]) == y
        transfer = transfer & rates["transfer_fakequant_pgd20"]
    robust = transfer & survived
    if gradient_sources:
        white = clean.copy()
        for name, source in gradient_sources.items():
            kept = clean.copy()
            if len(idx):
                attack = AutoAttack(straight_through(classifier, source, num_classes), norm=norm,
                                    attacks=BPDA_MEMBERS, apgd_steps=bpda_steps, seed=seed)
                kept[idx] = attack.run(x[idx], y[idx], epsilon).robust
            rates[f"bpda_{name}"] = kept
            white &= kept
        rates["bpda"] = white
        robust = robust & white
    out = _rates({**rates, "transfer": transfer, "square": clean & survived, "robust": robust})
    out["gap"] = out["square"] - out["transfer"]
    out["warning"] = None
    if float_gap is not None and abs(out["gap"] - float_gap) > WARN_GAP:
        out["warning"] = (f"black-box (Square) accuracy {100 * out['square']:.1f}% vs transfer "
                          f"{100 * out['transfer']:.1f}%, a gap of {100 * out['gap']:+.1f} points where the float "
                          f"model's Square-minus-white-box gap is {100 * float_gap:+.1f}: the attacks disagree about "
                          "this file more than about the float model, so its robust accuracy rests on whichever is "
                          "stronger here; attack it harder (more Square queries) before trusting it")
    return out
