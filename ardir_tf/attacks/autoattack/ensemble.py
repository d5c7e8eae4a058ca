"""The AutoAttack ensemble: each attack runs only on the examples that survived the previous ones.

``AutoAttack(model, norm="linf").run(x, y, epsilon)`` is the "standard" version of Croce & Hein
(2020): APGD-CE (100 iterations), APGD-T (targeted DLR loss, 100 iterations for each of the 9
classes with the largest logits after the true one), FAB-T (100 iterations per target, 9 targets)
and Square (5,000 queries, ``p_init = 0.8``), one restart each. An example counts as robust only if
it is classified correctly and survives every attack.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from ardir_tf.attacks import primitives
from ardir_tf.attacks.autoattack import common
from ardir_tf.attacks.autoattack.apgd import APGD
from ardir_tf.attacks.autoattack.fab import FABTargeted
from ardir_tf.attacks.autoattack.square import Square

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
MEMBERS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr")


@dataclasses.dataclass
class AttackRecord:
    """What one member of the ensemble did: the accuracy after it (cumulative), its seconds and
    how many examples it attacked and broke."""

    name: str
    robust_accuracy: float
    seconds: float
    attacked: int
    broken: int


@dataclasses.dataclass
class AutoAttackResult:
    """``robust`` ``[N]`` bool (correct and survived every attack), ``x_adv`` ``[N, ...]`` (the
    adversarial example where one was found, else the natural image), ``broken_by`` ``[N]`` (name of
    the attack that broke it, ``"natural"`` if misclassified, ``""`` if robust), ``records``."""

    robust: np.ndarray
    x_adv: np.ndarray
    broken_by: np.ndarray
    records: list

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.mean()) if len(self.robust) else 0.0


class AutoAttack:
    """The ensemble on one model and norm; its compiled attacks are reused across calls of :meth:`run`.

    Args:
        model: Keras classifier ``[B, H, W, C]`` in [0, 1] -> logits, called in inference mode.
        norm: ``"linf"`` or ``"l2"``.
        attacks: members in order, any of ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``
            (``apgd-dlr``: untargeted APGD on the DLR loss, AutoAttack's "rand" version member).
        apgd_steps, fab_steps: iterations per run (100).
        targets: target classes of APGD-T and FAB-T (9, capped at ``classes - 1``).
        square_queries: Square's queries per example (5,000).
        batch_size: examples per compiled call.
        seed: every run with the same seed draws the same random numbers.
    """

    def __init__(self, model: Callable, *, norm: str = "linf", attacks: Sequence[str] = STANDARD,
                 apgd_steps: int = 100, fab_steps: int = 100, targets: int = 9, square_queries: int = 5000,
                 batch_size: int = 500, seed: int = 0):
        primitives.check_norm(norm)
        unknown = [a for a in attacks if a not in MEMBERS]
        if unknown:
            raise ValueError(f"unknown AutoAttack member(s) {', '.join(unknown)}; use any of {', '.join(MEMBERS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.norm, self.attacks = model, norm, tuple(attacks)
        self.apgd_steps, self.fab_steps, self.targets = int(apgd_steps), int(fab_steps), int(targets)
        self.square_queries, self.batch_size, self.seed = int(square_queries), int(batch_size), int(seed)
        self._members: dict = {}

    def settings(self) -> dict:
        return {"version": "standard" if self.attacks == STANDARD else "custom", "attacks": list(self.attacks),
                "apgd_steps": self.apgd_steps, "fab_steps": self.fab_steps, "targets": self.targets,
                "square_queries": self.square_queries, "square_p_init": 0.8, "restarts": 1}

    def _member(self, name: str):
        if name not in self._members:
            seed = self.seed + MEMBERS.index(name)
            if name == "apgd-ce":
                m = APGD(self.model, norm=self.norm, loss="ce", steps=self.apgd_steps, seed=seed)
            elif name == "apgd-dlr":
                m = APGD(self.model, norm=self.norm, loss="dlr", steps=self.apgd_steps, seed=seed)
            elif name == "apgd-t":
                m = APGD(self.model, norm=self.norm, loss="dlr_targeted", steps=self.apgd_steps, seed=seed)
            elif name == "fab-t":
                m = FABTargeted(self.model, norm=self.norm, steps=self.fab_steps, seed=seed)
            else:
                m = Square(self.model, norm=self.norm, queries=self.square_queries, seed=seed)
            self._members[name] = m
        member = self._members[name]
        if getattr(member, "rng", None) is not None:
            member.rng.reset_from_seed(self.seed + MEMBERS.index(name))
        return member

    def _logits(self, x: np.ndarray) -> np.ndarray:
        out = [self.model(tf.constant(x[i:i + self.batch_size]), training=False).numpy()
               for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def run(self, x, y, epsilon: float, *, progress: Optional[Callable[[str, int, int], None]] = None,
            on_attack_end: Optional[Callable[[AttackRecord], None]] = None) -> AutoAttackResult:
        """Runs the ensemble on ``(x, y)`` at radius ``epsilon``.

        ``progress(name, done, total)`` is called after each batch of each member;
        ``on_attack_end(record)`` after each member.
        """
        x = np.asarray(x, np.float32)
        y = np.asarray(y).astype(np.int32)
        logits = self._logits(x)
        num_classes = logits.shape[-1]
        robust = np.argmax(logits, axis=-1) == y
        broken_by = np.where(robust, "", "natural").astype(object)
        x_adv = x.copy()
        n_targets = min(self.targets, num_classes - 1)
        targets = common.target_classes(logits, n_targets)
        records = []
        for name in self.attacks:
            start = time.perf_counter()
            attacked = np.flatnonzero(robust)
            targeted = name in ("apgd-t", "fab-t")
            passes = list(range(n_targets)) if targeted else [None]
            if targeted and name == "apgd-t" and num_classes < 4:
                raise ValueError("APGD-T's targeted DLR loss needs at least 4 classes")
            member = self._member(name)
            total, done = len(attacked) * len(passes), 0
            for j in passes:
                idx = np.flatnonzero(robust) if epsilon > 0 else np.zeros(0, np.int64)  # eps 0: nothing to find
                done += len(attacked) - len(idx)  # dropped before this pass count as done
                for b in range(0, len(idx), self.batch_size):
                    sel = idx[b:b + self.batch_size]
                    target = None if j is None else targets[sel, j]
                    if name == "square" and progress is not None:  # report within a batch too
                        def report(q, base=done, n=len(sel)):
                            progress(name, base + int(n * q / self.square_queries), total)

                        adv, hit = member(x[sel], y[sel], float(epsilon), target, progress=report)
                    else:
                        adv, hit = member(x[sel], y[sel], float(epsilon), target)
                    hit_idx = sel[hit]
                    x_adv[hit_idx] = adv[hit]
                    robust[hit_idx] = False
                    broken_by[hit_idx] = name
                    done += len(sel)
                    if progress is not None:
                        progress(name, done, total)
            record = AttackRecord(name=name, robust_accuracy=float(robust.mean()) if len(robust) else 0.0,
                                  seconds=round(time.perf_counter() - start, 3), attacked=int(len(attacked)),
                                  broken=int(len(attacked) - robust.sum()))
            records.append(record)
            if on_attack_end is not None:
                on_attack_end(record)
        return AutoAttackResult(robust=robust, x_adv=x_adv, broken_by=broken_by.astype(str), records=records)


def autoattack(model: Callable, x, y, *, epsilon: float, norm: str = "linf", **kwargs) -> AutoAttackResult:
    """One-call form of :class:`AutoAttack` (``kwargs`` go to its constructor)."""
    return AutoAttack(model, norm=norm, **kwargs).run(x, y, epsilon)
