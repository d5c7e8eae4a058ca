"""The AutoAttack ensemble: each attack runs only on the examples that survived the previous ones.

Three versions, with the budgets of the reference implementation (fra31/auto-attack, Croce & Hein
2020) except where noted:

* ``"standard"``: APGD-CE (100 iterations), APGD-T (targeted DLR loss, 100 iterations for each of
  the 9 classes with the largest logits after the true one), FAB-T (100 iterations per target,
  9 targets) and Square (5,000 queries, ``p_init = 0.8``), one run each.
* ``"plus"``: APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5 restarts, Square
  (5,000 queries) with 5 restarts, APGD-T (9 targets, 1 run) and FAB-T (9 targets) with 5
  restarts, in that order. The reference runs Square and FAB-T once in "plus"; ours runs them 5
  times, because on PGD-trained MNIST models extra Square restarts still break examples.
* ``"rand"`` (randomised models): APGD-CE and APGD-DLR, one run each, every gradient averaged over
  20 model calls (expectation over transformation).

An example counts as robust only if it is classified correctly and survives every attack; an
attack's result is checked with a fresh model call before the example counts as broken.
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
from ardir_tf.attacks.autoattack.fab import FAB
from ardir_tf.attacks.autoattack.square import Square

#: members in the order of each version, their restarts (default 1) and APGD's EOT samples
VERSIONS: dict[str, dict] = {
    "standard": {"attacks": ("apgd-ce", "apgd-t", "fab-t", "square"), "restarts": {}, "eot_samples": 1},
    "plus": {"attacks": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
             "restarts": {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5, "square": 5, "fab-t": 5}, "eot_samples": 1},
    "rand": {"attacks": ("apgd-ce", "apgd-dlr"), "restarts": {}, "eot_samples": 20},
}
STANDARD = VERSIONS["standard"]["attacks"]
#: every member; a member's random numbers are seeded with ``seed + MEMBERS.index(name)``
MEMBERS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
TARGETED = ("apgd-t", "fab-t")


@dataclasses.dataclass
class AttackRecord:
    """What one member of the ensemble did: the accuracy after it (cumulative), its seconds,
    how many examples it attacked and broke, and its runs per example (restarts)."""

    name: str
    robust_accuracy: float
    seconds: float
    attacked: int
    broken: int
    restarts: int = 1


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
        version: ``"standard"``, ``"plus"`` or ``"rand"`` (:data:`VERSIONS`): the members, their
            restarts and APGD's EOT samples.
        attacks: members in order (default: the version's), any of ``apgd-ce``, ``apgd-t``,
            ``fab-t``, ``square``, ``apgd-dlr`` (untargeted APGD on the DLR loss) and ``fab``
            (untargeted FAB). Giving them makes the run "custom".
        restarts: member -> runs per example (default: the version's; 1 for members it omits).
            Restart ``r > 0`` draws a new random start (FAB: from a random point, not ``x``).
        eot_samples: model calls averaged per APGD gradient (default: the version's).
        apgd_steps, fab_steps: iterations per run (100).
        targets: target classes of APGD-T and FAB-T (9, capped at ``classes - 1``).
        square_queries: Square's queries per example and run (5,000).
        batch_size: examples per compiled call.
        seed: every run with the same seed draws the same random numbers.
    """

    def __init__(self, model: Callable, *, norm: str = "linf", version: str = "standard",
                 attacks: Optional[Sequence[str]] = None, restarts: Optional[dict] = None,
                 eot_samples: Optional[int] = None, apgd_steps: int = 100, fab_steps: int = 100, targets: int = 9,
                 square_queries: int = 5000, batch_size: int = 500, seed: int = 0):
        primitives.check_norm(norm)
        if version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {version!r}; use one of {', '.join(VERSIONS)}")
        spec = VERSIONS[version]
        attacks = tuple(spec["attacks"] if attacks is None else attacks)
        unknown = [a for a in attacks if a not in MEMBERS]
        if unknown:
            raise ValueError(f"unknown AutoAttack member(s) {', '.join(unknown)}; use any of {', '.join(MEMBERS)}")
        restarts = dict(spec["restarts"] if restarts is None else restarts)
        bad = {k: v for k, v in restarts.items() if k not in MEMBERS or int(v) < 1}
        if bad:
            raise ValueError(f"restarts must map members to counts >= 1, got {bad}")
        eot = spec["eot_samples"] if eot_samples is None else int(eot_samples)
        if eot < 1:
            raise ValueError(f"eot_samples must be at least 1, got {eot}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.norm, self.attacks = model, norm, attacks
        self.restarts = {a: int(restarts.get(a, 1)) for a in attacks}
        self.eot_samples = eot
        self.apgd_steps, self.fab_steps, self.targets = int(apgd_steps), int(fab_steps), int(targets)
        self.square_queries, self.batch_size, self.seed = int(square_queries), int(batch_size), int(seed)
        is_version = (attacks == spec["attacks"] and self.restarts == {a: spec["restarts"].get(a, 1) for a in attacks}
                      and eot == spec["eot_samples"] and (self.apgd_steps, self.fab_steps, self.targets,
                                                          self.square_queries) == (100, 100, 9, 5000))
        #: the name of the budget: a version's only with all of its settings, else "custom"
        self.version = version if is_version else "custom"
        self._members: dict = {}

    def settings(self) -> dict:
        """The run's budget, recorded with every result: ``version`` (``standard``, ``plus``,
        ``rand`` or ``custom``), members, restarts per member, iterations, targets and queries."""
        return {"version": self.version, "attacks": list(self.attacks), "restarts": dict(self.restarts),
                "eot_samples": self.eot_samples, "apgd_steps": self.apgd_steps, "fab_steps": self.fab_steps,
                "targets": self.targets, "square_queries": self.square_queries, "square_p_init": 0.8}

    def _member(self, name: str):
        if name not in self._members:
            seed = self.seed + MEMBERS.index(name)
            if name in ("apgd-ce", "apgd-dlr", "apgd-t"):
                loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr_targeted"}[name]
                eot = self.eot_samples if name != "apgd-t" else 1
                m = APGD(self.model, norm=self.norm, loss=loss, steps=self.apgd_steps, eot_samples=eot, seed=seed)
            elif name in ("fab", "fab-t"):
                m = FAB(self.model, norm=self.norm, targeted=name == "fab-t", steps=self.fab_steps, seed=seed)
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
            targeted = name in TARGETED
            if name == "apgd-t" and num_classes < 4:
                raise ValueError("APGD-T's targeted DLR loss needs at least 4 classes")
            member = self._member(name)
            runs = self.restarts[name]
            passes = [(j, r) for j in (range(n_targets) if targeted else [None]) for r in range(runs)]
            total, done = len(attacked) * len(passes), 0
            for j, r in passes:
                idx = np.flatnonzero(robust) if epsilon > 0 else np.zeros(0, np.int64)  # eps 0: nothing to find
                done += len(attacked) - len(idx)  # dropped before this pass count as done
                for b in range(0, len(idx), self.batch_size):
                    sel = idx[b:b + self.batch_size]
                    target = None if j is None else targets[sel, j]
                    kwargs = {"random_start": r > 0} if name in ("fab", "fab-t") else {}
                    if name == "square" and progress is not None:  # report within a batch too
                        def report(q, base=done, n=len(sel)):
                            progress(name, base + int(n * q / self.square_queries), total)

                        kwargs["progress"] = report
                    adv, hit = member(x[sel], y[sel], float(epsilon), target, **kwargs)
                    hit = hit & (np.argmax(self._logits(adv), axis=-1) != y[sel])  # a fresh model call
                    hit_idx = sel[hit]
                    x_adv[hit_idx] = adv[hit]
                    robust[hit_idx] = False
                    broken_by[hit_idx] = name
                    done += len(sel)
                    if progress is not None:
                        progress(name, done, total)
            record = AttackRecord(name=name, robust_accuracy=float(robust.mean()) if len(robust) else 0.0,
                                  seconds=round(time.perf_counter() - start, 3), attacked=int(len(attacked)),
                                  broken=int(len(attacked) - robust.sum()), restarts=runs)
            records.append(record)
            if on_attack_end is not None:
                on_attack_end(record)
        return AutoAttackResult(robust=robust, x_adv=x_adv, broken_by=broken_by.astype(str), records=records)


def autoattack(model: Callable, x, y, *, epsilon: float, norm: str = "linf", version: str = "standard",
               **kwargs) -> AutoAttackResult:
    """One-call form of :class:`AutoAttack` (``kwargs`` go to its constructor)."""
    return AutoAttack(model, norm=norm, version=version, **kwargs).run(x, y, epsilon)
