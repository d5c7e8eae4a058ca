"""``python -m export``: write a verified deployment bundle of a trained classifier.

Usage::

    python -m export --model=runs/quickstart/model.keras --out=deploy/mnist \\
        [--onnx_opset=17] [--results=results.json] [--examples=10] [--verify_examples=256] \\
        [--dataset=mnist5k] [--data_dir=...] [--epsilon=0.3] [--overwrite] [--seed=0] [--verbose] \\
        [--quantize=dynamic,int8 [--calibration=images.npz | --calibration_examples=500] \\
         [--quantize_min_agreement=0.99] [--quantize_eval_examples=200] [--square_queries=1000]]

Writes ``DIR/saved_model/``, ``DIR/model.onnx``, ``DIR/model_card.json``, ``DIR/examples/``,
``DIR/BUILD.md``, ``DIR/predict.py`` and ``DIR/images.py`` after checking on held-out images that the
SavedModel and the ONNX model agree with the Keras model and that the attack signatures compute the
library's attacks (``docs/export.md``).
``--quantize`` adds LiteRT dynamic-range and full-int8 files and an int8 ONNX model, each checked
against the float model and attacked (clean, transfer, black-box Square) for the model card
(:mod:`export.quantize`).

Exit status: 0 on success; 1 when the verification fails (nothing is written, an existing DIR is
left as it was); 2 on bad input (flags, files, data), with a one-line ``error:`` message.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the export flags (only when run as a program)."""
    flags.DEFINE_string("model", None, "Path of the trained .keras classifier (e.g. WORKDIR/model.keras).",
                        required=True)
    flags.DEFINE_string("out", None, "Output directory of the bundle (must not exist unless --overwrite).",
                        required=True)
    flags.DEFINE_integer("onnx_opset", 17, "ONNX opset of model.onnx.")
    flags.DEFINE_string("results", None, "Evaluation results JSON for the model card (default: results.json "
                        "beside the model, if present).")
    flags.DEFINE_integer("examples", 10, "Held-out example images saved to DIR/examples/.")
    flags.DEFINE_integer("verify_examples", 256, "Held-out images of the self-verification (at least 64).")
    flags.DEFINE_string("dataset", None, "Dataset of the model (default: the dataset in settings.json beside it).")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
    flags.DEFINE_float("epsilon", None, "Threat-model radius (default: the run's settings).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing export in --out.")
    flags.DEFINE_integer("seed", 0, "Seed of the verification attack.")
    flags.DEFINE_list("quantize", [], "Quantized variants to add: any of dynamic (LiteRT int8 weights), int8 "
                      "(LiteRT full int8 and an int8 ONNX model); default none.")
    flags.DEFINE_string("calibration", None, "An .npz of calibration images (array 'x', [N, H, W, C] in [0, 1]) for "
                        "--quantize=int8 (default: the first --calibration_examples training images).")
    flags.DEFINE_integer("calibration_examples", 500, "Training images of the default int8 calibration sample.")
    flags.DEFINE_float("quantize_min_agreement", 0.99, "Least top-1 agreement of each quantized file with the float "
                       "model on the held-out verification images.")
    flags.DEFINE_integer("quantize_eval_examples", 200, "Held-out images of the quantized files' robustness protocol "
                         "(0 skips it).")
    flags.DEFINE_integer("square_queries", 1000, "Query budget of the black-box Square attack on each quantized file.")
    flags.DEFINE_bool("verbose", False, "Show the traceback of an error, not just its one-line message.")


def main(argv) -> None:
    """Runs the export; see the module docstring for the exit status."""
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    from export import atomic

    from export import quantize

    atomic.check_destination(FLAGS.out, FLAGS.overwrite)  # fail fast, before TensorFlow loads
    modes = quantize.parse_modes(FLAGS.quantize)
    if modes:
        quantize.check_options(FLAGS.calibration_examples, FLAGS.quantize_min_agreement,
                               FLAGS.quantize_eval_examples, FLAGS.square_queries)
        if FLAGS.calibration and not os.path.isfile(FLAGS.calibration):
            raise ValueError(f"calibration file {FLAGS.calibration!r} does not exist")
    if not os.path.isfile(FLAGS.model):
        raise ValueError(f"model file {FLAGS.model!r} does not exist")
    if not FLAGS.verbose:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's and tf2onnx's Python info lines

    from export import exporter
    from export.verify import VerificationError

    try:
        exporter.export(
            FLAGS.model, FLAGS.out, onnx_opset=FLAGS.onnx_opset, results_path=FLAGS.results,
            examples=FLAGS.examples, verify_examples=FLAGS.verify_examples, dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir, epsilon=FLAGS.epsilon, overwrite=FLAGS.overwrite, seed=FLAGS.seed,
            quantize=modes, calibration=FLAGS.calibration, calibration_examples=FLAGS.calibration_examples,
            min_agreement=FLAGS.quantize_min_agreement, quantize_eval_examples=FLAGS.quantize_eval_examples,
            square_queries=FLAGS.square_queries,
        )
    except VerificationError as err:
        print(f"error: {err}; nothing was written to {FLAGS.out}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    from ardir_tf import cli  # light: absl only, no TensorFlow until the export itself

    define_flags()
    cli.run(main)
