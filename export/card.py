"""``model_card.json``: what was exported, how it was trained and how robust it is.

The card is built from the run's workdir (``settings.json`` and ``results.json`` beside
``model.keras``, both written by ``python -m ardir_tf.train``), the dataset's description, a few
held-out example images (``examples/*.png``) and the export's own verification numbers. Its keys
are listed in ``docs/export.md``; ``schema_version`` changes when they do.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

import keras
import numpy as np

from ardir_tf import data
from ardir_tf.attacks.pgd import validate
from ardir_tf.io import RESULTS_FILE, SETTINGS_FILE, resolve_teacher, sha256
from ardir_tf.models import default_ir_layers

SCHEMA_VERSION = 1
#: Training settings that describe how the run was *displayed*, not the method.
_NOT_METHOD_SETTINGS = ("progress", "verbose", "data_dir")
#: Methods trained from a teacher (ardir_tf.methods.DISTILLATION_METHODS, repeated to keep this
#: module light).
_DISTILLATION = ("ard", "rslad", "iad", "ardir")


def read_json(path: str, what: str) -> dict:
    """Reads a JSON object, with a one-line ``ValueError`` for an unreadable or non-object file."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except OSError as err:
        raise ValueError(f"cannot read {what} {path!r}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path!r} must hold a JSON object, got {type(obj).__name__}")
    return obj


def run_files(model_path: str, results_path: str | None = None) -> tuple[dict | None, dict | None]:
    """The run's ``settings.json`` and results beside ``model_path`` (``None`` where absent).

    Args:
        model_path: the exported ``.keras`` file.
        results_path: an explicit results file (must exist), else ``results.json`` beside the model
            when present.
    """
    workdir = os.path.dirname(os.path.abspath(model_path))
    settings_path = os.path.join(workdir, SETTINGS_FILE)
    settings = read_json(settings_path, "settings file") if os.path.isfile(settings_path) else None
    if results_path:
        if not os.path.isfile(results_path):
            raise ValueError(f"results file {results_path!r} does not exist")
        results = read_json(results_path, "results file")
    else:
        default = os.path.join(workdir, RESULTS_FILE)
        results = read_json(default, "results file") if os.path.isfile(default) else None
    return settings, results


def ir_layers(model: keras.Model, settings: dict | None) -> tuple[list[str], list[str] | None, str]:
    """The layers the model was distilled on: ``(student layers, teacher layers or None, source)``.

    ARDIR runs name them in ``settings["ir_layers"]`` as ``"student:teacher"`` or a name used on
    both sides; an ARDIR run without names, and any other model, uses
    :func:`ardir_tf.models.default_ir_layers` (the last convolutional stage).
    """
    named = (settings or {}).get("ir_layers") or []
    if isinstance(named, str):
        named = [p for p in named.split(",") if p]
    if settings and settings.get("method") == "ardir" and named:
        student, teacher = [], []
        for item in named:
            s, _, t = str(item).partition(":")
            student.append(s.strip())
            teacher.append((t or s).strip())
        return student, teacher, "settings"
    return default_ir_layers(model), None, "default"


def teacher_info(settings: dict | None, workdir: str) -> dict | None:
    """The teacher of a distilled run: its path and, when its workdir is readable, its method,
    architecture and evaluation numbers. ``None`` for a method without teacher.

    Args:
        settings: the run's ``settings.json``.
        workdir: the run's directory (its teacher is recorded relative to it).
    """
    if not settings or settings.get("method") not in _DISTILLATION:
        return None
    path = resolve_teacher(settings.get("teacher") or "", workdir)
    info: dict[str, Any] = {"path": path or None, "available": bool(path) and os.path.isfile(path)}
    if path:
        workdir = os.path.dirname(path)
        s_path, r_path = os.path.join(workdir, SETTINGS_FILE), os.path.join(workdir, RESULTS_FILE)
        if os.path.isfile(s_path):
            try:
                s = read_json(s_path, "teacher settings")
                info.update(method=s.get("method"), architecture=s.get("model"),
                            model_options=s.get("model_options") or "", epochs=s.get("epochs"))
            except ValueError:
                pass
        if os.path.isfile(r_path):
            try:
                r = read_json(r_path, "teacher results")
                info.update(natural_accuracy=r.get("natural_accuracy"), robust_accuracy=r.get("robust_accuracy"))
            except ValueError:
                pass
    return info


def threat_model(settings: dict | None, results: dict | None, info: data.DatasetInfo,
                 epsilon: float | None = None) -> dict:
    """``{"norm", "epsilon", "epsilon_source"}``: the ``--epsilon`` flag, else the run's settings,
    else its results, else the library's default for the dataset (0.3 for one-channel images,
    8/255 otherwise)."""
    norm = (settings or {}).get("norm") or (results or {}).get("norm") or "linf"
    if norm not in ("linf", "l2"):
        raise ValueError(f"unknown threat-model norm {norm!r} in the run's settings")
    for value, source in ((epsilon, "flag"), ((settings or {}).get("epsilon"), "settings"),
                          ((results or {}).get("epsilon"), "results")):
        if value is not None:
            eps = float(value)
            break
    else:
        eps, source = (0.3 if info.input_shape[-1] == 1 else 8 / 255), "dataset default"
    validate(eps, None, None, norm, "none")
    return {"norm": norm, "epsilon": eps, "epsilon_source": source}


def save_examples(x: np.ndarray, y: np.ndarray, class_names: Sequence[str], directory: str) -> list[dict]:
    """Writes images as PNG files ``NNN_LABEL.png`` in ``directory``; returns the card's index.

    Pixels are stored as ``round(255 * x)``; reading a PNG back and dividing by 255 gives the
    original pixels of uint8 datasets exactly.
    """
    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    index = []
    for i, (image, label) in enumerate(zip(np.asarray(x), np.asarray(y))):
        name = f"{i:03d}_{int(label)}.png"
        pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(tf.io.encode_png(pixels).numpy())
        index.append({"file": f"{os.path.basename(directory)}/{name}", "label": int(label),
                      "class_name": str(class_names[int(label)]) if int(label) < len(class_names) else str(label)})
    return index


def versions() -> dict[str, str]:
    """Versions of the libraries that produced the artifacts."""
    out = {}
    for name in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - a missing optional package
            out[name] = "unavailable"
    return out


def build(
    *,
    model: keras.Model,
    model_path: str,
    info: data.DatasetInfo,
    settings: dict | None,
    results: dict | None,
    threat: dict,
    student_layers: Sequence[str],
    teacher_layers: Sequence[str] | None,
    layers_source: str,
    examples: list[dict],
    verification: dict,
    onnx_file: str,
    onnx_opset: int,
) -> dict:
    """Assembles ``model_card.json`` (keys documented in ``docs/export.md``)."""
    from export.savedmodel import ATTACK_STEP_FRACTION, MAX_ATTACK_STEPS

    h, w, c = info.input_shape
    method = None
    if settings:
        method = {"name": settings.get("method"),
                  "settings": {k: v for k, v in sorted(settings.items()) if k not in _NOT_METHOD_SETTINGS}}
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "architecture": (settings or {}).get("model") or model.name,
            "options": (settings or {}).get("model_options") or "",
            "keras_name": model.name,
            "parameters": int(model.count_params()),
            "source": os.path.abspath(model_path),
            "source_sha256": sha256(model_path),
        },
        "dataset": {
            "name": info.name,
            "num_classes": info.num_classes,
            "class_names": list(info.class_names),
            "num_train": info.num_train,
            "num_test": info.num_test,
        },
        "input": {
            "name": "images",
            "shape": [h, w, c],
            "layout": "NHWC",
            "dtype": "float32",
            "range": [0.0, 1.0],
            "normalization": ("inside the model (mean/std layer)" if info.mean is not None else "none"),
        },
        "outputs": {
            "logits": f"float32 [N, {info.num_classes}]",
            "probabilities": f"float32 [N, {info.num_classes}], softmax of the logits",
        },
        "method": method,
        "teacher": teacher_info(settings, os.path.dirname(os.path.abspath(model_path))),
        "internal_representations": {
            "layers": list(student_layers),
            "teacher_layers": list(teacher_layers) if teacher_layers else None,
            "source": layers_source,
        },
        "threat_model": threat,
        "evaluation": results,
        "examples": examples,
        "artifacts": {
            "saved_model": {
                "path": "saved_model",
                "signatures": {
                    "serving_default": "images float32 [N,H,W,C] in [0,1] -> logits, probabilities float32 [N,K]",
                    "features": "images -> {layer name: activation float32} for the layers above",
                    "attack": (f"images, labels int32 [N], epsilon float32 scalar, steps int32 scalar in "
                               f"[0, {MAX_ATTACK_STEPS}] -> adversarial_images, logits; PGD ({threat['norm']}), "
                               f"uniform start, step {ATTACK_STEP_FRACTION:g}*epsilon, cross-entropy, clip [0, 1]"),
                    "fgsm": (f"images, labels, epsilon -> adversarial_images, logits; FGSM ({threat['norm']}): one "
                             "step of epsilon on the cross-entropy, no random start, clip [0, 1]"),
                    "pgd": (f"images, labels, epsilon, step_size float32 scalar, steps int32 scalar in "
                            f"[0, {MAX_ATTACK_STEPS}], seed int64 [2] -> adversarial_images, logits; PGD "
                            f"({threat['norm']}), uniform start drawn from seed, cross-entropy, clip [0, 1]"),
                    "cw": ("as pgd, on the Carlini-Wagner margin min(max_{j!=y} z_j - z_y, 50)"),
                },
            },
            "onnx": {"path": os.path.basename(onnx_file), "opset": int(onnx_opset), "sha256": sha256(onnx_file),
                     "inputs": {"images": f"float32 [N, {h}, {w}, {c}]"},
                     "outputs": {"logits": f"float32 [N, {info.num_classes}]",
                                 "probabilities": f"float32 [N, {info.num_classes}]"}},
            "examples": "examples/",
            "predict": "predict.py and its image loader images.py (onnxruntime + pillow, no TensorFlow)",
        },
        "verification": verification,
        "export": {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
    }


def build_md(card: dict) -> str:
    """The bundle's ``BUILD.md``: deploy the ONNX model with onnxruntime, no TensorFlow needed."""
    h, w, c = card["input"]["shape"]
    mode = "L" if c == 1 else "RGB"
    example = card["examples"][0]["file"] if card["examples"] else "digit.png"
    threat = card["threat_model"]
    ev = card.get("evaluation") or {}
    robust = ev.get("robust_accuracy", {}).get("all")
    numbers = (f"natural accuracy {100 * ev['natural_accuracy']:.1f}%, robust accuracy {100 * robust:.1f}% "
               f"({threat['norm']} eps={threat['epsilon']:g}, {ev.get('examples')} held-out examples)"
               if ev.get("natural_accuracy") is not None and robust is not None else "no evaluation results recorded")
    return f"""# Deploying {card['model']['architecture']} ({card['dataset']['name']})

Robust classifier exported by `python -m export`: {numbers}. See `model_card.json`.

## Without TensorFlow: onnxruntime

    pip install onnxruntime pillow numpy

```python
import json, onnxruntime as ort
from images import load_image      # images.py of this bundle: the loader of predict.py and the demo

card = json.load(open("model_card.json"))
h, w, c = card["input"]["shape"]                       # {h}, {w}, {c}
x, _ = load_image("{example}", (h, w, c))              # EXIF rotation, alpha over white, "{mode}", resize
x = x[None]                                            # float32 [1, H, W, C] in [0, 1]
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
logits, probabilities = session.run(["logits", "probabilities"], {{"images": x}})
k = int(probabilities[0].argmax())
print(card["dataset"]["class_names"][k], float(probabilities[0, k]))
```

Or from the command line (top 3 classes of each image):

    python predict.py --onnx=model.onnx {example}

onnxruntime refuses an input of the wrong rank, size, channel count or dtype with an
`INVALID_ARGUMENT` error naming the expected value.

## With TensorFlow: the SavedModel

```python
import tensorflow as tf
m = tf.saved_model.load("saved_model")
out = m.signatures["serving_default"](images=tf.constant(x))          # logits, probabilities
feats = m.signatures["features"](images=tf.constant(x))               # {{layer: activation}}
adv = m.signatures["pgd"](images=tf.constant(x), labels=tf.constant([k], tf.int32),   # PGD-20
                          epsilon=tf.constant({threat['epsilon']:g}), step_size=tf.constant({threat['epsilon'] / 4:g}),
                          steps=tf.constant(20), seed=tf.constant([0, 0], tf.int64))
# also: m.signatures["fgsm"](images=..., labels=..., epsilon=...), m.signatures["cw"](same as pgd)
```

Load SavedModels from trusted sources only: a SavedModel is a TensorFlow graph and can read and
write files when it runs.
""" + (_quantized_md(card) if card.get("quantization") else "")


def _quantized_md(card: dict) -> str:
    section = card["quantization"]
    files = [v["file"] for k, v in section["variants"].items() if k != "float"]
    tflite = next((f for f in files if f.endswith(".tflite")), "model_int8.tflite")
    return f"""
## Quantized files

{", ".join(f"`{f}`" for f in files)}: same input (float32 [N, H, W, C] in [0, 1]) and logits
output as the float model; calibration: {section["calibration"]["source"]}. Measured on the export
machine (robust accuracy: per example, the minimum over clean, transferred PGD-20/AutoAttack,
BPDA (APGD-CE and APGD-T on the file's own logits with a float stand-in's gradients) and a
black-box Square attack on the file itself):

{format_quantization(section)}

LiteRT, without TensorFlow:

    pip install ai-edge-litert numpy

```python
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path="{tflite}")
inp, out = it.get_input_details()[0], it.get_output_details()[0]
it.resize_tensor_input(inp["index"], x.shape); it.allocate_tensors()
it.set_tensor(inp["index"], x); it.invoke()
logits = it.get_tensor(out["index"])                                  # float32 [N, classes]
```
"""


def quantization_rows(section: dict) -> list[dict]:
    """One row per variant (float first) of the card's ``quantization`` section: file, bytes, size
    ratio, latency (batch 1), throughput (batch 128), top-1 agreement, and the robustness figures
    (clean, transfer PGD-20 / AutoAttack, BPDA, Square, robust minimum) where measured."""
    results = (section.get("robustness") or {}).get("results") or {}
    rows = []
    for name, v in section["variants"].items():
        r = results.get(name) or {}
        rows.append({
            "variant": name, "file": v["file"], "bytes": v["bytes"], "size_ratio": v["size_ratio"],
            "latency_ms_batch1": v.get("latency_ms_batch1"), "images_per_s_batch128": v.get("throughput_images_per_s"),
            "top1_agreement": (v.get("verification") or {}).get("top1_agreement", 1.0 if name == "float" else None),
            "clean": r.get("clean"),
            "pgd20": r.get("transfer_pgd20", r.get("pgd20")),
            "autoattack": r.get("transfer_autoattack", r.get("autoattack")),
            "fakequant_pgd20": r.get("transfer_fakequant_pgd20"),
            "bpda": r.get("bpda"),
            "square": r.get("square"),
            "robust": r.get("robust"),
            "warning": r.get("warning"),
        })
    return rows


def format_quantization(section: dict) -> str:
    """A Markdown table of :func:`quantization_rows` (accuracies in %; the float row's PGD-20 and
    AutoAttack are white-box on the float model, the others' are those images transferred; FQ
    PGD-20: PGD-20 white-box on the fake-quantized float copy, transferred; BPDA: APGD-CE and
    APGD-T on the file's own logits with the float model's and the copy's gradients)."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    rob = section.get("robustness") or {}
    head = ("| variant | file | bytes | size | latency b=1 (ms) | img/s b=128 | top-1 agree | clean | PGD-20 | "
            "AutoAttack | FQ PGD-20 | BPDA | Square | robust (min) |")
    lines = [head, "|" + "---|" * 14]
    for r in quantization_rows(section):
        lines.append(f"| {r['variant']} | {r['file']} | {r['bytes']:,} | {100 * r['size_ratio']:.1f}% | "
                     f"{r['latency_ms_batch1']:.3f} | {r['images_per_s_batch128']:,.0f} | {pct(r['top1_agreement'])} | "
                     f"{pct(r['clean'])} | {pct(r['pgd20'])} | {pct(r['autoattack'])} | {pct(r['fakequant_pgd20'])} | "
                     f"{pct(r['bpda'])} | {pct(r['square'])} | "
                     f"{pct(r['robust'])} |")
    if rob:
        bpda = rob.get("bpda")
        lines.append(f"\n{rob['examples']} held-out images, {rob['norm']} eps={rob['epsilon']:g}; Square "
                     f"{rob['square_queries']} queries against each file through its runtime"
                     + (f"; BPDA: {', '.join(a.upper() for a in bpda['attacks'])} on each file's own logits with "
                        f"the gradients of {' and of '.join(bpda['gradient_sources'])}" if bpda else "") + ".")
    for r in quantization_rows(section):
        if r["warning"]:
            lines.append(f"warning: {r['file']}: {r['warning']}")
    return "\n".join(lines)
