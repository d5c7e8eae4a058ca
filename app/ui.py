"""The Gradio page: pick or upload an image, attack it live, compare a robust and a standard model.

``build(primary, compare=None)`` returns a ``gr.Blocks``; its named API endpoint ``/attack`` takes
``(image file, attack, eps, steps, invert)`` and returns the page's outputs, the last of which is a
JSON summary (see ``docs/app.md``). When the robust student's bundle holds quantized files, a
second endpoint ``/square`` takes ``(image file, file, eps, queries, invert)`` and returns the
status, the adversarial image, its perturbation, the file's prediction and a JSON summary.
"""

from __future__ import annotations

import html
import math
import time
import traceback
from typing import Any, Sequence

import gradio as gr
import numpy as np

from app.runtime import (ATTACKS, MAX_SQUARE_QUERIES, MAX_STEPS, Bundle, InputError, card_robustness, load_image,
                         perturbation_display, to_display)

DEFAULT_ATTACK = "PGD"
DEFAULT_STEPS = 10
DEFAULT_SQUARE_QUERIES = 300
#: Points of the accuracy-versus-eps curve computed at start-up when the card has no sweep.
SWEEP_POINTS = 9
SWEEP_STEPS = 10
DISPLAY_SIZE = 192

CSS = """
#status {min-height: 2.5em}
.model-heading h3 {margin-bottom: 0}
.shown-image img {object-fit: contain !important; image-rendering: pixelated}
"""


# ------------------------------------------------------------------------------ input components
class CheckedImage(gr.Image):
    """``gr.Image`` (same front end) whose server side never decodes the upload: the handler reads
    the file itself and turns a non-image, a huge or a damaged file into a readable message."""

    is_template = True  # use the front end of gr.Image

    def preprocess(self, payload):  # noqa: D102 - see gr.Image.preprocess
        if payload is None:
            return None
        if getattr(payload, "url", None) and str(payload.url).startswith("data:"):
            try:
                return super().preprocess(payload)
            except Exception:
                raise gr.Error("The pasted image could not be decoded.", print_exception=False) from None
        if getattr(payload, "path", None) is None:
            raise gr.Error("No image: pick an example or upload an image file.", print_exception=False)
        return str(payload.path)


class CheckedSlider(gr.Slider):
    """``gr.Slider`` whose range check names the quantity (``eps must lie in [0, 0.4]; got 5``)."""

    is_template = True

    def __init__(self, *, what: str = "value", **kwargs):  # keywords only: Gradio re-binds arguments
        super().__init__(**kwargs)
        self._what = what

    def get_config(self, cls=None):  # the front end's configuration is that of gr.Slider's arguments
        return super().get_config(cls or gr.Slider)

    def preprocess(self, payload):  # noqa: D102 - see gr.Slider.preprocess
        try:
            value = float(payload)
        except (TypeError, ValueError):
            raise gr.Error(f"{self._what} must be a number; got {payload!r}.", print_exception=False) from None
        if not math.isfinite(value) or value < self.minimum or value > self.maximum:
            raise gr.Error(f"{self._what} must lie in [{self.minimum:g}, {self.maximum:g}]; got {value:g}.",
                           print_exception=False)
        return value


# --------------------------------------------------------------------------------------- helpers
def _percent(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _eps_text(eps: float, norm: str, channels: int) -> str:
    """``0.0314 (8/255)`` for colour images under L-inf, else just the number."""
    text = f"{eps:.3g}"
    if norm == "linf" and channels == 3 and eps > 0:
        text += f" ({eps * 255:.3g}/255)"
    return text


def _prediction_dict(p: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """``{class name: probability}`` for ``gr.Label`` (duplicate names disambiguated)."""
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        key = name if name not in out else f"{name} ({i})"
        out[key] = float(p[i])
    return out


def _top(p: np.ndarray, names: Sequence[str], k: int = 5) -> list[dict]:
    order = np.argsort(-p, kind="stable")[:k]
    return [{"class": int(i), "label": names[i], "probability": round(float(p[i]), 6)} for i in order]


def robustness_markdown(bundles: Sequence[Bundle], roles: Sequence[str]) -> str:
    """A Markdown table of the cards' evaluation numbers, one column per model."""
    rows = [card_robustness(b.card) for b in bundles]
    if not any(rows):
        return ("_The model cards hold no evaluation results (the export found no `results.json`): "
                "the plot shows PGD on the bundles' few example images only, which is not the models' "
                "robustness: evaluate the model and export it again for real numbers._")
    attacks: list[str] = []
    for r in rows:
        for a in (r or {}).get("robust", {}):
            if a not in attacks and a != "all":
                attacks.append(a)
    head = "| | " + " | ".join(f"{html.escape(role)}: **{html.escape(b.name)}**"
                               for b, role in zip(bundles, roles)) + " |"
    lines = [head, "|---" * (len(bundles) + 1) + "|"]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(r, b) for r, b in zip(rows, bundles)) + " |")

    def threat(r, b):
        r = r or {}
        return f"{r.get('norm', b.norm)} eps {_eps_text(r.get('epsilon', b.epsilon), b.norm, b.shape[2])}"

    row("threat model", threat)
    row("test images", lambda r, b: str((r or {}).get("examples") or "–"))
    row("natural accuracy", lambda r, b: _percent((r or {}).get("natural")))
    for a in attacks:
        row(f"robust accuracy, {a}", lambda r, b, a=a: _percent((r or {}).get("robust", {}).get(a)))
    row("**robust accuracy, all attacks**", lambda r, b: f"**{_percent((r or {}).get('robust', {}).get('all'))}**")

    def parity(r, b):
        v = (b.card.get("verification") or {}).get("natural") or {}
        o = v.get("onnx") or {}
        if "max_abs_logit_diff" not in o:
            return "–"
        return f"{o['max_abs_logit_diff']:.1e} (top-1 agreement {_percent(o.get('top1_agreement'))})"

    row("export check: ONNX vs Keras max \\|logit diff\\|", parity)
    return "\n".join(lines) + ("\n\n_From each bundle's `model_card.json` (`evaluation`: accuracy on held-out "
                               "test images under each attack at the threat model's eps; `all`: the images "
                               "that survive every attack)._")


def accuracy_curves(bundles: Sequence[Bundle], max_eps: float) -> list[dict]:
    """The accuracy-versus-eps curves of the plot, one per bundle with numbers.

    A card with a sweep gives a line, a card with an evaluation but no sweep its two points
    (natural, robust at eps): the model's robustness on held-out test images. Only a bundle whose
    card has no evaluation at all gets a curve measured now, PGD-``SWEEP_STEPS`` on its handful of
    example images, labelled as such (``style="examples"``): a few images say little about a
    model's robustness and must not stand beside the card's numbers.
    """
    curves = []
    for index, b in enumerate(bundles):
        r = card_robustness(b.card)
        if r and r["sweep"]:
            pts = r["sweep"]
            eps = [p[0] for p in pts]
            acc = [p[2] for p in pts]
            if eps[0] > 0:
                eps, acc = [0.0] + eps, [pts[0][1]] + acc
            curves.append({"model": b.name, "index": index, "epsilons": eps, "accuracy": acc, "style": "line",
                           "source": f"model card sweep, {r['examples']} test images, all attacks"})
        elif r and "all" in r["robust"]:
            curves.append({"model": b.name, "index": index, "epsilons": [0.0, r["epsilon"]],
                           "accuracy": [r["natural"], r["robust"]["all"]], "style": "points",
                           "source": f"model card, {r['examples']} test images, all attacks"})
        else:
            grid = [float(e) for e in np.linspace(0.0, max_eps, SWEEP_POINTS)]
            measured = b.accuracy_curve(grid, steps=SWEEP_STEPS)
            if measured:
                curves.append({"model": b.name, "index": index, "epsilons": measured["epsilons"],
                               "accuracy": measured["accuracy"], "style": "examples",
                               "source": f"NOT the model's robustness: {measured['attack']} on only the "
                                         f"{measured['examples']} example images of the bundle (no evaluation "
                                         "in its card)"})
    return curves


def accuracy_figure(curves: list[dict], bundles: Sequence[Bundle]):
    """A matplotlib figure (object API: safe outside the main thread) of accuracy versus eps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for c in curves:
        colour = colours[c.get("index", 0) % len(colours)]
        label = f"{c['model']}: {c['source']}"
        if c["style"] == "points":
            ax.plot(c["epsilons"], c["accuracy"], "o", color=colour, markersize=8, label=label)
        elif c["style"] == "examples":  # faint and dotted: a sanity check, not a measurement of robustness
            ax.plot(c["epsilons"], c["accuracy"], ":", marker="x", color=colour, alpha=0.6, label=label)
        else:
            ax.plot(c["epsilons"], c["accuracy"], "-", marker=".", color=colour, label=label)
    seen = set()
    for b in bundles:
        if b.epsilon not in seen:
            seen.add(b.epsilon)
            ax.axvline(b.epsilon, color="gray", linestyle=":", linewidth=1)
            ax.annotate(f"threat model eps {b.epsilon:.3g}", (b.epsilon, 1.02), fontsize=7, color="gray",
                        ha="center", xycoords=("data", "axes fraction"))
    norm = bundles[0].norm
    ax.set_xlabel(f"eps ({norm}, pixels in [0, 1])")
    ax.set_ylabel("accuracy")
    if any(c["style"] == "examples" for c in curves):
        ax.set_title("x: a few example images only, not the model's robustness", fontsize=8)
    elif curves:
        ax.set_title("accuracy on held-out test images (model cards)", fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if curves:  # below the axes: the curves fill the plot's corners
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    else:
        ax.text(0.5, 0.5, "no evaluation results and no labelled example images", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------- the app
class Demo:
    """The request handler (validation, attacks, outputs), separate from the layout."""

    def __init__(self, primary: Bundle, compare: Bundle | None = None):
        self.bundles = [primary] + ([compare] if compare else [])
        self.roles = ["robust student"] + (["comparison"] if compare else [])
        # Colour L-inf models think in 8-bit levels (8/255): the slider has 4 decimals and a value
        # within 0.02 of a whole level is taken as exactly that level (0.0314 -> 8/255).
        self.levels = primary.norm == "linf" and primary.shape[2] == 3
        self.max_eps = round(primary.max_epsilon(), 4)
        self.eps_step = 0.0001 if self.levels else 0.01 if self.max_eps >= 0.2 else 0.001
        # The slider starts at the threat model's eps (the radius the card's numbers are about).
        start = primary.epsilon if primary.epsilon > 0 else self.max_eps / 2
        self.default_eps = float(min(self.max_eps, round(start, 4)))

    # One request ------------------------------------------------------------------------------
    def run(self, image: str | None, attack: str, eps: float, steps: float, invert: bool = False) -> tuple:
        result = self._guarded(self._run, image, attack, eps, steps, bool(invert))
        result["outputs"].insert(0, self._status(result["summary"]))
        return tuple(result["outputs"]) + (result["summary"],)

    def square(self, image: str | None, file: str, eps: float, queries: float, invert: bool = False) -> tuple:
        """The ``/square`` endpoint: Square against a quantized file of the robust student."""
        result = self._guarded(self._square, image, file, eps, queries, bool(invert))
        return tuple(result["outputs"]) + (result["summary"],)

    @staticmethod
    def _guarded(fn, *args) -> dict:
        start = time.perf_counter()
        try:
            result = fn(*args)
        except InputError as err:  # a bad request, not a bug: a message in the page, no traceback in the log
            raise gr.Error(str(err), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as err:  # a bug or a broken bundle: the traceback to the log, a message to the page
            traceback.print_exc()
            raise gr.Error(f"The attack failed ({type(err).__name__}); the server log has the details.",
                           print_exception=False) from None
        result["summary"]["seconds"] = round(time.perf_counter() - start, 3)
        return result

    def _check_eps(self, eps) -> float:
        try:
            eps = float(eps)
        except (TypeError, ValueError):
            raise InputError(f"eps must be a number; got {eps!r}.") from None
        if not (math.isfinite(eps) and 0.0 <= eps <= self.max_eps):
            raise InputError(f"eps must lie in [0, {self.max_eps:g}]; got {eps:g}.")
        if self.levels and abs(eps * 255 - round(eps * 255)) < 0.02:
            eps = round(eps * 255) / 255
        return eps

    @staticmethod
    def _check_count(value, what: str, high: int) -> int:
        """``value`` as a whole number in [1, ``high``], else an :class:`InputError` naming ``what``."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be a whole number; got {value!r}.") from None
        if not (math.isfinite(number) and number == int(number) and 1 <= number <= high):
            raise InputError(f"{what} must be a whole number in [1, {high}]; got {value!r}.")
        return int(number)

    def _run(self, image, attack, eps, steps, invert) -> dict:
        if attack not in ATTACKS:
            raise InputError(f"Unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}.")
        eps = self._check_eps(eps)
        steps = self._check_count(steps, "steps", MAX_STEPS)  # checked for FGSM too, which takes one step
        steps = 1 if attack == "FGSM" else steps
        if image is None:
            raise InputError("No image: pick an example or upload an image file.")
        summary: dict[str, Any] = {"attack": attack, "epsilon": eps, "steps": steps, "invert": invert,
                                   "input": {}, "models": []}
        outputs: list[Any] = []
        converted: dict[tuple, tuple] = {}
        for bundle, role in zip(self.bundles, self.roles):
            if bundle.shape not in converted:
                converted[bundle.shape] = load_image(image, bundle.shape, invert)
            x, info = converted[bundle.shape]
            if not summary["input"]:
                example = next((e for e in (b.find_example(image) for b in self.bundles) if e), None)
                summary["input"] = {"size": info["size"], "mode": info["mode"],
                                    "example": example.path.rsplit("/", 1)[-1] if example else None,
                                    "true_label": example.class_name if example else None}
            model_summary, model_outputs = self._attack_one(bundle, role, x[None], attack, eps, steps)
            summary["models"].append(model_summary)
            outputs += model_outputs
        return {"summary": summary, "outputs": outputs}

    def _attack_one(self, bundle: Bundle, role: str, x: np.ndarray, attack: str, eps: float, steps: int):
        names = bundle.class_names
        p_clean = bundle.predict(x)[0]
        label = int(np.argmax(p_clean))
        x_adv = bundle.attack(x, np.array([label], np.int32), attack, eps, steps)
        p_adv = bundle.predict(x_adv)[0]
        onnx = bundle.predict_onnx(np.concatenate([x, x_adv]))
        delta = x_adv[0] - x[0]
        adv_label = int(np.argmax(p_adv))
        onnx_labels = [int(np.argmax(onnx[0])), int(np.argmax(onnx[1]))]
        onnx_diff = float(np.max(np.abs(onnx - np.stack([p_clean, p_adv]))))
        summary = {
            "model": bundle.name, "role": role, "norm": bundle.norm,
            "clean": {"class": label, "label": names[label], "probability": float(p_clean[label]),
                      "top5": _top(p_clean, names)},
            "adversarial": {"class": adv_label, "label": names[adv_label], "probability": float(p_adv[adv_label]),
                            "top5": _top(p_adv, names)},
            "flipped": adv_label != label,
            "perturbation": {"linf": float(np.max(np.abs(delta))), "l2": float(np.sqrt(np.sum(delta ** 2)))},
            "onnx": {"clean": {"class": onnx_labels[0], "label": names[onnx_labels[0]], "probability": float(onnx[0].max())},
                     "adversarial": {"class": onnx_labels[1], "label": names[onnx_labels[1]],
                                     "probability": float(onnx[1].max())},
                     "agrees": onnx_labels == [label, adv_label], "max_abs_probability_diff": onnx_diff},
        }
        quantized = bundle.predict_quantized(np.concatenate([x, x_adv]))
        summary["quantized"] = {
            name: {"clean": {"class": int(np.argmax(p[0])), "label": names[int(np.argmax(p[0]))]},
                   "adversarial": {"class": int(np.argmax(p[1])), "label": names[int(np.argmax(p[1]))]}}
            for name, p in quantized.items()}
        pert, gain = perturbation_display(delta, DISPLAY_SIZE)
        onnx_md = (f"**ONNX (deployed model.onnx)**: clean **{html.escape(names[onnx_labels[0]])}** "
                   f"({100 * onnx[0].max():.1f}%), adversarial **{html.escape(names[onnx_labels[1]])}** "
                   f"({100 * onnx[1].max():.1f}%); "
                   + ("agrees with the SavedModel" if summary["onnx"]["agrees"] else "**differs from the SavedModel**")
                   + f" (max |probability difference| {onnx_diff:.1e}). "
                   f"Perturbation: L-inf {summary['perturbation']['linf']:.3g}, L2 {summary['perturbation']['l2']:.3g}; "
                   f"the perturbation image shows it amplified {gain:.3g}x around mid-gray.")
        if quantized:
            onnx_md += "\n\n**Quantized files, same images** (clean → adversarial): " + "; ".join(
                f"{html.escape(name)}: {html.escape(q['clean']['label'])} → {html.escape(q['adversarial']['label'])}"
                for name, q in summary["quantized"].items()) + "."
        verdict = ("### " + ("Prediction flipped" if summary["flipped"] else "Prediction kept")
                   + f": {html.escape(names[label])} → {html.escape(names[adv_label])}")
        outputs = [to_display(x[0], DISPLAY_SIZE), _prediction_dict(p_clean, names), to_display(x_adv[0], DISPLAY_SIZE),
                   pert, _prediction_dict(p_adv, names), verdict, onnx_md]
        return summary, outputs

    def _square(self, image, file, eps, queries, invert) -> dict:
        bundle = self.bundles[0]
        if not bundle.quantized:
            raise InputError("This bundle has no quantized files (export it with --quantize=int8).")
        if file not in bundle.quantized:
            raise InputError(f"Unknown quantized file {file!r}; choose one of {', '.join(bundle.quantized)}.")
        eps = self._check_eps(eps)
        q = self._check_count(queries, "queries", MAX_SQUARE_QUERIES)
        if image is None:
            raise InputError("No image: pick an example or upload an image file.")
        x, _ = load_image(image, bundle.shape, invert)
        x = x[None]
        names = bundle.class_names
        p_clean = bundle.predict_quantized(x)[file][0]
        label = int(np.argmax(p_clean))
        x_adv, fooled, used = bundle.square_quantized(x, np.array([label], np.int32), file, eps, int(q))
        p_adv = bundle.predict_quantized(x_adv)[file][0]
        adv_label = int(np.argmax(p_adv))
        delta = x_adv[0] - x[0]
        summary = {"file": file, "attack": "Square", "epsilon": eps, "queries": int(q), "queries_used": int(used),
                   "clean": {"class": label, "label": names[label], "probability": float(p_clean[label])},
                   "adversarial": {"class": adv_label, "label": names[adv_label],
                                   "probability": float(p_adv[adv_label]), "top5": _top(p_adv, names)},
                   "flipped": adv_label != label,
                   "perturbation": {"linf": float(np.max(np.abs(delta))), "l2": float(np.sqrt(np.sum(delta ** 2)))}}
        eps_text = _eps_text(eps, bundle.norm, bundle.shape[2])
        status = (f"**Square** on `{html.escape(file)}`, eps = {eps_text}: {html.escape(names[label])} → "
                  f"{html.escape(names[adv_label])} "
                  + (f"(**fooled** after at most {used} queries)" if summary["flipped"]
                     else f"(kept its answer for all {int(q)} queries)") + ".")
        pert, _ = perturbation_display(delta, DISPLAY_SIZE)
        outputs = [status, to_display(x_adv[0], DISPLAY_SIZE), pert, _prediction_dict(p_adv, names)]
        return {"summary": summary, "outputs": outputs}

    def _status(self, summary: dict) -> str:
        attack = summary["attack"] + ("" if summary["attack"] == "FGSM" else f"-{summary['steps']}")
        src = summary["input"]
        what = (f"example {src['example']} (true class {html.escape(str(src['true_label']))})" if src.get("example")
                else f"upload ({src['size'][0]}x{src['size'][1]} {src['mode']})")
        parts = [f"{m['role']}: {html.escape(m['clean']['label'])} → {html.escape(m['adversarial']['label'])} "
                 f"({'flipped' if m['flipped'] else 'kept'})" for m in summary["models"]]
        eps = _eps_text(summary["epsilon"], self.bundles[0].norm, self.bundles[0].shape[2])
        return f"**{attack}**, eps = {eps} on {what}: " + "; ".join(parts) + f". ({summary['seconds']:.2f} s)"


def build(primary: Bundle, compare: Bundle | None = None, *, curves: list[dict] | None = None) -> gr.Blocks:
    """The page. ``curves``: accuracy-versus-eps curves (default: :func:`accuracy_curves`)."""
    demo_logic = Demo(primary, compare)
    bundles = demo_logic.bundles
    if curves is None:
        curves = accuracy_curves(bundles, demo_logic.max_eps)
    figure = accuracy_figure(curves, bundles)
    h, w, c = primary.shape
    card = primary.card
    dataset = (card.get("dataset") or {}).get("name") or "?"

    shown = dict(interactive=False, height=DISPLAY_SIZE, format="png", min_width=90, buttons=[],
                 elem_classes=["shown-image"])  # the images the page shows (not inputs)
    with gr.Blocks(title="Robustness demo", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# Adversarial robustness, live\n"
            f"An attacker changes every pixel of the image by at most **eps** (the {primary.norm} threat model; "
            f"pixels in [0, 1]) to change the model's prediction. A robust model keeps its answer; a standard "
            f"one is fooled by changes a person barely sees. Models: "
            + ", ".join(f"**{html.escape(b.name)}** ({r})" for b, r in zip(bundles, demo_logic.roles))
            + f", trained on {html.escape(dataset)} ({w}x{h}, {'grayscale' if c == 1 else 'RGB'}). "
            "Each model is attacked on its own clean prediction (white-box, by its SavedModel's own attack signatures)."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                image = CheckedImage(label="Image: pick an example below or upload one (any size or mode)",
                                     type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                     format="png", height=220, elem_id="input-image")
                if primary.examples:
                    gr.Examples(examples=[[e.path] for e in primary.examples], inputs=[image],
                                label="Examples from the export bundle", examples_per_page=12, elem_id="examples")
                attack = gr.Radio(list(ATTACKS), value=DEFAULT_ATTACK, label="Attack", elem_id="attack",
                                  info="The bundle's own attack signatures. FGSM: one step of size eps. PGD: steps of eps/4 "
                                       "from a random start. CW: PGD on the Carlini-Wagner margin.")
                eps = CheckedSlider(minimum=0.0, maximum=demo_logic.max_eps, value=demo_logic.default_eps,
                                    step=demo_logic.eps_step, label=f"eps ({primary.norm}, pixels in [0, 1])", what="eps",
                                    info=f"threat model: {_eps_text(primary.epsilon, primary.norm, c)}",
                                    elem_id="eps")
                steps = CheckedSlider(minimum=1, maximum=MAX_STEPS, value=DEFAULT_STEPS, step=1, label="steps (PGD and CW)",
                                      what="steps", elem_id="steps")
                invert = gr.Checkbox(False, label="invert the image (dark ink on light paper → the model's white on black)"
                                     if c == 1 else "invert the image", elem_id="invert")
                run = gr.Button("Run attack", variant="primary", elem_id="run")
            with gr.Column(scale=3):
                # Every output has a label: gradio_client names the /attack endpoint's outputs after
                # them (robust_student_adversarial_image, ...); unlabelled ones would be value_13.
                status = gr.Markdown("Pick an example or upload an image, then press **Run attack**.",
                                     label="status", elem_id="status")
                outputs: list[Any] = [status]
                with gr.Row(equal_height=False):
                    for i, (b, role) in enumerate(zip(bundles, demo_logic.roles)):
                        with gr.Column(elem_id=f"model-{i}"):
                            gr.Markdown(f"### {html.escape(role.capitalize())}: {html.escape(b.name)}",
                                        elem_classes=["model-heading"])
                            with gr.Row():
                                clean_img = gr.Image(label=f"{role}: clean image", elem_id=f"clean-{i}", **shown)
                                adv_img = gr.Image(label=f"{role}: adversarial image", elem_id=f"adversarial-{i}",
                                                   **shown)
                                pert_img = gr.Image(label=f"{role}: perturbation", elem_id=f"perturbation-{i}",
                                                    **shown)
                            with gr.Row():
                                clean_label = gr.Label(num_top_classes=5, label=f"{role}: clean prediction",
                                                       elem_id=f"clean-label-{i}")
                                adv_label = gr.Label(num_top_classes=5, label=f"{role}: adversarial prediction",
                                                     elem_id=f"adversarial-label-{i}")
                            verdict = gr.Markdown(label=f"{role}: verdict", elem_id=f"verdict-{i}")
                            onnx_md = gr.Markdown(label=f"{role}: onnx check", elem_id=f"onnx-{i}")
                            outputs += [clean_img, clean_label, adv_img, pert_img, adv_label, verdict, onnx_md]
        if primary.quantized:
            files = list(primary.quantized)
            with gr.Accordion("Black-box: the Square attack on a quantized file of the robust student",
                              open=True, elem_id="square-section"):
                gr.Markdown("The quantized files run in their own runtimes (LiteRT, onnxruntime), which give no "
                            "gradients, so they are attacked by **Square**: a random search that only reads the "
                            "file's scores. It uses the image, eps and inversion chosen above.")
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        square_file = gr.Dropdown(files, value=next((f for f in files if "int8" in f), files[0]),
                                                  label="quantized file", elem_id="square-file")
                        square_queries = CheckedSlider(minimum=1, maximum=MAX_SQUARE_QUERIES,
                                                       value=DEFAULT_SQUARE_QUERIES, step=1, label="queries",
                                                       what="queries", elem_id="square-queries")
                        square_run = gr.Button("Run Square on the quantized file", elem_id="square-run")
                    with gr.Column(scale=3):
                        square_status = gr.Markdown(label="square: status", elem_id="square-status")
                        with gr.Row():
                            square_img = gr.Image(label="square: adversarial image", elem_id="square-adversarial",
                                                  **shown)
                            square_pert = gr.Image(label="square: perturbation", elem_id="square-perturbation",
                                                   **shown)
                            square_label = gr.Label(num_top_classes=5, label="square: prediction of the file",
                                                    elem_id="square-label")
                        with gr.Accordion("Square result as JSON", open=False):
                            square_summary = gr.JSON(label="square: summary", elem_id="square-summary")
            square_run.click(demo_logic.square, inputs=[image, square_file, eps, square_queries, invert],
                             outputs=[square_status, square_img, square_pert, square_label, square_summary],
                             api_name="square", concurrency_id="square")
        with gr.Row():
            with gr.Column():
                gr.Markdown("## Robustness numbers\n" + robustness_markdown(bundles, demo_logic.roles),
                            elem_id="robustness")
            with gr.Column():
                gr.Plot(figure, label="accuracy versus eps", elem_id="accuracy-plot")
                if any(c["style"] == "examples" for c in curves):
                    gr.Markdown("_The dotted curve is PGD on the bundle's few example images, computed at "
                                "start-up because the card has no evaluation: a sanity check of the demo, "
                                "not the model's robustness._", elem_id="plot-note")
        with gr.Accordion("Result as JSON (the /attack API's last output)", open=False):
            summary = gr.JSON(label="summary", elem_id="summary")
        outputs.append(summary)

        # Outputs in the layout's order: status, 7 per model, the JSON summary.
        run.click(demo_logic.run, inputs=[image, attack, eps, steps, invert], outputs=outputs, api_name="attack",
                  concurrency_id="attack")
    demo.demo_logic = demo_logic  # the handler object, for callers that want it without the page
    return demo
