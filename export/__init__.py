"""Deployable robust students: a TF SavedModel with signatures, an ONNX model and a model card.

``python -m export --model=WORKDIR/model.keras --out=DIR`` (see :mod:`export.__main__` and
``docs/export.md``); ``python -m export.predict --onnx=DIR/model.onnx IMAGE...`` classifies images
with onnxruntime alone. From Python::

    from export.exporter import export
    card = export("runs/quickstart/model.keras", "deploy/mnist")

This package's ``__init__`` imports nothing heavy, so that :mod:`export.predict` runs without
TensorFlow and the demo (``python -m app``) can import the image loader :mod:`export.images`
without the training library.
"""

