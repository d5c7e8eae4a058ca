"""AutoAttack (Croce & Hein 2020) written in TensorFlow and compiled with ``tf.function``.

Members: :class:`APGD` (APGD-CE, APGD-DLR, APGD-T), :class:`FAB` (untargeted FAB and FAB-T;
:class:`FABTargeted` is FAB-T), :class:`Square`; :class:`AutoAttack` runs them as the "standard",
"plus" or "rand" ensemble (:data:`VERSIONS`). See docs/evaluation.md.
"""

from ardir_tf.attacks.autoattack import losses
from ardir_tf.attacks.autoattack.apgd import APGD, checkpoints, halve_step
from ardir_tf.attacks.autoattack.ensemble import (
    MEMBERS, STANDARD, VERSIONS, AttackRecord, AutoAttack, AutoAttackResult, autoattack,
)
from ardir_tf.attacks.autoattack.fab import FAB, FABTargeted, project_hyperplane_box
from ardir_tf.attacks.autoattack.square import Square, p_schedule, square_side

__all__ = [
    "APGD", "FAB", "MEMBERS", "STANDARD", "VERSIONS", "AttackRecord", "AutoAttack", "AutoAttackResult",
    "FABTargeted", "Square", "autoattack", "checkpoints", "halve_step", "losses", "p_schedule",
    "project_hyperplane_box", "square_side",
]
