"""``python -m app --export=DIR [--compare=DIR2] [--host=127.0.0.1] [--port=7860]``: the robustness demo.

Runs on the exported artifacts (TensorFlow SavedModel, ONNX model, quantized files, model card,
example images): of this project it imports only the image loader :mod:`export.images`, the
model-file opener :mod:`export.classifiers`, the library's attacks (Square on the quantized files)
and its quiet start (:mod:`ardir_tf.cli`), never the models, trainers or the exporter. Starts
without TensorFlow's start-up log unless ``--verbose``. Binds to 127.0.0.1 unless ``--host`` says
otherwise and never opens a public share link (nor prints Gradio's advice to). Exit status 2 with
one ``error: ...`` line for a bad bundle directory or flag.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_CONCURRENCY = 4
DEFAULT_QUEUE_SIZE = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Robustness demo: attack images live on exported models (see docs/app.md).")
    parser.add_argument("--export", required=True,
                        help="export bundle of the robust student (python -m export --out=DIR)")
    parser.add_argument("--compare", default=None,
                        help="a second bundle shown side by side (e.g. a standard-trained model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="requests computed at the same time; the rest wait in the queue "
                             f"(default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up log")
    parser.add_argument("--queue_size", type=int, default=DEFAULT_QUEUE_SIZE,
                        help="most requests waiting in the queue; more are refused with a message "
                             f"(default {DEFAULT_QUEUE_SIZE})")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must lie in [0, 65535], got {args.port}")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.queue_size < 1:
        parser.error(f"--queue_size must be at least 1, got {args.queue_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ardir_tf import cli  # no TensorFlow: the project's one quiet start, before TensorFlow loads

    cli.quiet_start(["--verbose"] if args.verbose else [])
    from app.runtime import BundleError, check_bundle, MAX_UPLOAD_BYTES

    # Check the directories before the slow imports, so that a typo fails at once.
    try:
        export_dir = check_bundle(args.export)
        compare_dir = check_bundle(args.compare) if args.compare else None
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from app.runtime import Bundle

    try:
        primary = Bundle(export_dir)
        compare = Bundle(compare_dir) if compare_dir else None
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"loaded {primary.name} from {export_dir}" + (f" and {compare.name} from {compare_dir}" if compare else ""),
          flush=True)
    for bundle in (primary, compare):
        if bundle is not None:
            bundle.warm_up()

    from app import ui

    demo = ui.build(primary, compare)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    try:
        # quiet: Gradio would otherwise advise "To create a public link, set share=True", an option
        # this demo deliberately does not have; the address is printed below instead.
        demo.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                    max_file_size=MAX_UPLOAD_BYTES, show_error=False, ssr_mode=False, css=ui.CSS,
                    allowed_paths=[os.path.join(b.path, "examples") for b in (primary, compare) if b],
                    quiet=True, prevent_thread_lock=True)
    except OSError as err:  # port in use, address not available
        print(f"error: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    print(f"* Running on local URL:  {demo.local_url.rstrip('/')}", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
