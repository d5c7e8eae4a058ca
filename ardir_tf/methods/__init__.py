"""Training methods: each a ``keras.Model`` with its own ``train_step``.

``get(name)`` returns the class: ``standard``, ``pgd_at``, ``trades`` (teachers and baselines),
``ard``, ``rslad``, ``iad``, ``ardir`` (distillation from a frozen teacher).
"""

from ardir_tf.methods.ard import ARD, ARDLoss
from ardir_tf.methods.ardir import ARDIR
from ardir_tf.methods.attack_config import AttackConfig
from ardir_tf.methods.base import AdversarialTrainer
from ardir_tf.methods.distill import DistillationTrainer, OutputDistillationTrainer
from ardir_tf.methods.iad import IAD, IADLoss
from ardir_tf.methods.pgd_at import PGDAT
from ardir_tf.methods.rslad import RSLAD
from ardir_tf.methods.standard import Standard
from ardir_tf.methods.trades import TRADES

METHODS = {"standard": Standard, "pgd_at": PGDAT, "trades": TRADES, "ard": ARD, "rslad": RSLAD, "iad": IAD, "ardir": ARDIR}
DISTILLATION_METHODS = ("ard", "rslad", "iad", "ardir")


def get(name: str) -> type:
    """The trainer class of method ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["ARD", "ARDIR", "ARDLoss", "AdversarialTrainer", "AttackConfig", "DistillationTrainer", "IAD", "IADLoss",
           "METHODS", "OutputDistillationTrainer", "PGDAT", "RSLAD", "Standard", "TRADES", "get"]
