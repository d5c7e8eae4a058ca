"""ardir-tf: adversarially robust distillation with internal representations, in Keras/TensorFlow."""

__version__ = "0.1.0"

from ardir_tf import attacks, losses, models  # noqa: E402

__all__ = ["attacks", "losses", "models", "__version__"]
