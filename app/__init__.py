"""Gradio robustness demo on exported bundles: ``python -m app --export=DIR [--compare=DIR2]``.

See ``docs/app.md``. Imports only TensorFlow, onnxruntime, Gradio, NumPy, Pillow and matplotlib, and
of this project the image loader :mod:`export.images` (Pillow only, shared with the bundle's
``predict.py``): nothing of ``ardir_tf``. The attacks are the bundle's own SavedModel signatures.
"""
