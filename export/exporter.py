"""The export pipeline: ``model.keras`` -> a verified deployment bundle ``DIR``.

``DIR`` receives ``saved_model/`` (three signatures, :mod:`export.savedmodel`), ``model.onnx``
(:mod:`export.onnx_model`), ``model_card.json`` (:mod:`export.card`), ``examples/*.png``,
``BUILD.md`` (deployment with onnxruntime), ``predict.py`` and ``images.py`` (copies of
:mod:`export.predict` and its image loader :mod:`export.images`).
Everything is written to a temporary sibling directory, verified (:mod:`export.verify`) and only
then renamed into place (:mod:`export.atomic`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Sequence

import keras

from ardir_tf import data
from ardir_tf.evaluate import float32_model
from ardir_tf.io import load_model_file
from export import atomic, card as card_lib, onnx_model, quantize as quantize_lib, savedmodel, verify as verify_lib

CARD_FILE = "model_card.json"
ONNX_FILE = "model.onnx"
SAVED_MODEL_DIR = "saved_model"
EXAMPLES_DIR = "examples"
MAX_EXAMPLES = 1000
#: Files of this package copied into the bundle: the ONNX command line and its image loader.
BUNDLED_SCRIPTS = ("predict.py", "images.py", "classifiers.py")


def _check_model(model: keras.Model, info: data.DatasetInfo) -> None:
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 3:
        raise ValueError(f"model {model.name!r} must take images [N, H, W, C]; its input shape is {shape}")
    if any(d is not None and int(d) != e for d, e in zip(shape, info.input_shape)):
        raise ValueError(f"model {model.name!r} takes images of shape {list(shape)} but dataset {info.name!r} has "
                         f"{list(info.input_shape)}; pass the model's --dataset")
    classes = int(model.outputs[0].shape[-1])
    if classes != info.num_classes:
        raise ValueError(f"model {model.name!r} has {classes} outputs but dataset {info.name!r} has "
                         f"{info.num_classes} classes; pass the model's --dataset")


def export(
    model_path: str,
    out: str,
    *,
    onnx_opset: int = onnx_model.DEFAULT_OPSET,
    results_path: str | None = None,
    examples: int = 10,
    verify_examples: int = 256,
    dataset: str | None = None,
    data_dir: str | None = None,
    epsilon: float | None = None,
    overwrite: bool = False,
    tolerance: float = verify_lib.DEFAULT_TOLERANCE,
    seed: int = 0,
    quantize: Sequence[str] | str = (),
    calibration: str | None = None,
    calibration_examples: int = quantize_lib.DEFAULT_CALIBRATION_EXAMPLES,
    min_agreement: float = quantize_lib.DEFAULT_MIN_AGREEMENT,
    quantize_eval_examples: int = 200,
    square_queries: int = 1000,
    log: Callable[[str], None] = print,
) -> dict:
    """Exports, verifies and publishes ``model_path`` as the bundle ``out``.

    Args:
        model_path: a ``.keras`` classifier; ``settings.json``/``results.json`` beside it (a
            training workdir) fill the model card.
        out: the bundle directory to create.
        onnx_opset: ONNX opset of ``model.onnx``.
        results_path: evaluation results to put in the card (default: ``results.json`` beside the
            model, if any).
        examples: held-out example images saved to ``examples/``.
        verify_examples: held-out images of the verification (at least 64).
        dataset: the dataset (default: the run's ``settings.json``).
        data_dir: tensorflow-datasets data directory.
        epsilon: threat-model radius (default: the run's settings, else its results, else the
            dataset's default).
        overwrite: replace an existing export at ``out``.
        tolerance: largest allowed absolute logit difference of the verification.
        seed: seed of the verification's attack (and of the quantized files' robustness protocol).
        quantize: quantization modes (:data:`export.quantize.MODES`, e.g. ``"dynamic,int8"``);
            empty: no quantized files.
        calibration: an ``.npz`` of calibration images for ``int8`` (default: the first
            ``calibration_examples`` images of the training split).
        calibration_examples: images of the default calibration sample.
        min_agreement: least top-1 agreement of each quantized file with the float model.
        quantize_eval_examples: held-out images of the quantized files' robustness protocol (0 skips it).
        square_queries: Square's query budget in that protocol.
        log: where progress lines go.

    Returns:
        The model card (also written to ``out/model_card.json``).

    Raises:
        ValueError: bad arguments, an unreadable model/run file, unavailable data.
        export.verify.VerificationError: an artifact disagrees with the Keras model; nothing is
            written and an existing ``out`` is left as it was.
    """
    out = atomic.check_destination(out, overwrite)
    onnx_opset = onnx_model.check_opset(onnx_opset)
    if not 0 <= int(examples) <= MAX_EXAMPLES:
        raise ValueError(f"--examples must lie in [0, {MAX_EXAMPLES}], got {examples}")
    if int(verify_examples) < verify_lib.MIN_EXAMPLES:
        raise ValueError(f"--verify_examples must be at least {verify_lib.MIN_EXAMPLES}, got {verify_examples}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    modes = quantize_lib.parse_modes(quantize)
    if modes:
        quantize_lib.check_options(calibration_examples, min_agreement, quantize_eval_examples, square_queries)

    model = float32_model(load_model_file(model_path))
    settings, results = card_lib.run_files(model_path, results_path)
    name = dataset or (settings or {}).get("dataset")
    if not name:
        raise ValueError(f"no settings.json beside {model_path!r} names the dataset; pass --dataset")
    info = data.get_info(name, data_dir if data_dir is not None else (settings or {}).get("data_dir"))
    _check_model(model, info)
    student_layers, teacher_layers, layers_source = card_lib.ir_layers(model, settings)
    threat = card_lib.threat_model(settings, results, info, epsilon)
    data_dir = data_dir if data_dir is not None else (settings or {}).get("data_dir")
    calibration_x = calibration_source = None
    if modes:  # bad calibration input fails here, before anything is written
        calibration_x, calibration_source = quantize_lib.calibration_sample(
            name, data_dir, info.input_shape, calibration, calibration_examples)
    x, y = data.load_arrays(name, "test", data_dir,
                            examples=max(int(verify_examples), int(examples),
                                         int(quantize_eval_examples) if modes else 0))
    if len(x) < verify_lib.MIN_EXAMPLES:
        raise ValueError(f"the test split of {info.name!r} has only {len(x)} images; the verification needs "
                         f"{verify_lib.MIN_EXAMPLES}")

    tmp = atomic.make_temporary(out)
    try:
        log(f"exporting {model_path} ({model.name}, {info.name}, {threat['norm']} eps={threat['epsilon']:g}) "
            f"to {out}")
        if modes:  # LiteRT first: a model it cannot convert fails before the float artifacts are built
            quantize_lib.write_variants(model, tmp, modes, calibration_x)
        sm_dir = os.path.join(tmp, SAVED_MODEL_DIR)
        savedmodel.save(model, sm_dir, info.input_shape, student_layers, threat["norm"])
        onnx_path = os.path.join(tmp, ONNX_FILE)
        onnx_model.convert(model, onnx_path, info.input_shape, onnx_opset, metadata={
            "class_names": list(info.class_names), "input_shape": list(info.input_shape),
            "input_range": [0.0, 1.0], "dataset": info.name, "threat_model": threat,
        })
        try:
            report = verify_lib.verify(
                model, sm_dir, onnx_path, x[:verify_examples], y[:verify_examples], epsilon=threat["epsilon"],
                norm=threat["norm"], ir_layers=student_layers, tolerance=tolerance, seed=seed,
            )
        except verify_lib.VerificationError as err:
            log(verify_lib.format_report(err.report))
            raise
        report["dataset"] = info.name
        report["split"] = f"test, first {report['examples']} images"
        log(verify_lib.format_report(report))
        index = card_lib.save_examples(x[:examples], y[:examples], info.class_names,
                                       os.path.join(tmp, EXAMPLES_DIR))
        model_card = card_lib.build(
            model=model, model_path=model_path, info=info, settings=settings, results=results, threat=threat,
            student_layers=student_layers, teacher_layers=teacher_layers, layers_source=layers_source,
            examples=index, verification=report, onnx_file=onnx_path, onnx_opset=onnx_opset,
        )
        if modes:
            log(f"quantizing ({', '.join(modes)}; calibration: {calibration_source})")
            model_card["quantization"] = quantize_lib.export_variants(
                model, tmp, modes, calibration=calibration_x, calibration_source=calibration_source,
                float_onnx=onnx_path, x=x[:max(int(verify_examples), int(quantize_eval_examples))],
                y=y[:max(int(verify_examples), int(quantize_eval_examples))], epsilon=threat["epsilon"],
                norm=threat["norm"], min_agreement=min_agreement, eval_examples=quantize_eval_examples,
                queries=square_queries, seed=seed, log=log)
            log(card_lib.format_quantization(model_card["quantization"]))
        with open(os.path.join(tmp, CARD_FILE), "w") as f:
            json.dump(model_card, f, indent=2)
            f.write("\n")
        with open(os.path.join(tmp, "BUILD.md"), "w") as f:
            f.write(card_lib.build_md(model_card))
        here = os.path.dirname(os.path.abspath(__file__))
        for script in BUNDLED_SCRIPTS:
            shutil.copyfile(os.path.join(here, script), os.path.join(tmp, script))
        atomic.publish(tmp, out, overwrite)
    except BaseException:
        atomic.discard(tmp)
        raise
    quantized = "".join(f"{v['file']}, " for k, v in (model_card.get("quantization") or {}).get("variants", {}).items()
                        if k != "float")
    log(f"wrote {out}: {SAVED_MODEL_DIR}/, {ONNX_FILE}, {quantized}{CARD_FILE}, {EXAMPLES_DIR}/ ({len(index)} images), "
        "BUILD.md, predict.py, images.py, classifiers.py")
    return model_card
