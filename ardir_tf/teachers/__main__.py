"""``python -m ardir_tf.teachers``: convert a PyTorch robust checkpoint into a Keras teacher.

Examples::

    python -m ardir_tf.teachers --model_name=Wang2023Better_WRN-28-10 --model_dir=models \\
        --out=teachers/wang2023_wrn28.keras
    python -m ardir_tf.teachers --checkpoint=model_best.pt --arch=wrn-34-10 --out=trades.keras
    python -m ardir_tf.teachers --list

Exit status 2 with one ``error:`` line on bad input (a checkpoint that does not fit names its first
offending key); nothing is written then.
"""

from __future__ import annotations

import json

from absl import flags

from ardir_tf.cli import run

D = flags
D.DEFINE_string("checkpoint", None, "PyTorch checkpoint (.pt): a state_dict, or a dict with one under 'state_dict'.")
D.DEFINE_string("arch", None, "Source architecture: wrn-D-K, dm-wrn-D-K, dm-preact-resnet-18, resnet-18, preact-resnet-18.")
D.DEFINE_enum("activation", None, ["relu", "swish"], "Activation of a dm-* architecture (default swish).")
D.DEFINE_list("mean", None, "Per-channel input mean of the source model (default: the architecture's).")
D.DEFINE_list("std", None, "Per-channel input std of the source model (with --mean).")
D.DEFINE_string("model_name", None, "A RobustBench CIFAR-10 Linf name (see --list): architecture and numbers from the table.")
D.DEFINE_string("model_dir", "models", "RobustBench model folder: the checkpoint is <model_dir>/cifar10/Linf/<model_name>.pt.")
D.DEFINE_bool("download", False, "Download --model_name through robustbench when missing (needs robustbench and the network).")
D.DEFINE_integer("num_classes", 10, "Logits of the source model.")
D.DEFINE_string("out", None, "Output .keras path (the provenance JSON goes beside it).")
D.DEFINE_bool("list", False, "Print the --model_name table (architecture, published clean/AutoAttack %) and exit.")
D.DEFINE_bool("verbose", False, "Print tracebacks on errors.")
FLAGS = flags.FLAGS


def main(argv) -> None:
    from ardir_tf.teachers import convert_teacher, zoo

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.list:
        for e in zoo.ENTRIES:
            print(f"{e.name:42s} {e.arch:20s} clean {e.clean_accuracy}%  AutoAttack {e.autoattack_accuracy}%")
        return
    if not FLAGS.out:
        raise ValueError("--out is required (the .keras file to write)")
    normalization = "default"
    if FLAGS.mean or FLAGS.std:
        if not (FLAGS.mean and FLAGS.std):
            raise ValueError("give --mean and --std together")
        normalization = ([float(v) for v in FLAGS.mean], [float(v) for v in FLAGS.std])
    _, provenance = convert_teacher(
        checkpoint=FLAGS.checkpoint, arch=FLAGS.arch, model_name=FLAGS.model_name, model_dir=FLAGS.model_dir,
        out=FLAGS.out, activation=FLAGS.activation, normalization=normalization,
        num_classes=FLAGS.num_classes, fetch=FLAGS.download,
    )
    published = provenance.get("published") or {}
    print(json.dumps({
        "out": FLAGS.out, "json": provenance["json"], "architecture": provenance["architecture_detail"],
        "checkpoint_sha256": provenance["checkpoint_sha256"], "stages": provenance["stages"],
        "published_clean": published.get("clean_accuracy"), "published_autoattack": published.get("autoattack_accuracy"),
    }, indent=2))


if __name__ == "__main__":
    run(main)
