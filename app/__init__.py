"""Gradio robustness demo on exported bundles: ``python -m app --export=DIR [--compare=DIR2]``.

See ``docs/app.md``. Imports only TensorFlow, onnxruntime, Gradio, NumPy, Pillow and matplotlib:
nothing of ``ardir_tf`` or ``export``.
"""
