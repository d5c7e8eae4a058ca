"""The evaluation's terminal table (``ardir_tf.evaluate.format_table``) stays readable at 100 columns."""

from __future__ import annotations

from ardir_tf import evaluate as ev

ATTACKS = ["fgsm", "pgd20", "cw", "autoattack", "autoattack/apgd-ce", "autoattack/apgd-t", "autoattack/fab-t",
           "autoattack/square", "apgd-ce", "apgd-t", "fab-t", "square", "all"]


def _results(offset: float) -> dict:
    return {"examples": 1000, "norm": "linf", "epsilon": 0.3, "natural_accuracy": 0.969,
            "robust_accuracy": {a: round(0.5 + offset + i / 100, 4) for i, a in enumerate(ATTACKS)}}


def test_every_line_fits_100_columns_and_every_top_level_attack_is_shown():
    rows = {"teacher_with_a_long_name": _results(0.0), "ardir": _results(0.1)}
    table = ev.format_table(rows)
    assert max(len(line) for line in table.splitlines()) <= 100, table
    cells = [c.strip() for line in table.splitlines() for c in line.split("|")]
    for attack in ATTACKS:
        assert (attack in cells) == ("/" not in attack), attack  # members are left to the JSON and report
    for name, r in rows.items():
        for attack, value in r["robust_accuracy"].items():
            if "/" not in attack:
                assert f"{100 * value:.1f}" in cells
    assert table.splitlines()[-1] == "(AutoAttack's members: in the results JSON and the report)"
    assert sum(line.startswith("model ") for line in table.splitlines()) >= 2  # continued in a second block


def test_a_narrow_table_is_one_block():
    table = ev.format_table({"ardir": {"examples": 100, "norm": "linf", "epsilon": 0.3, "natural_accuracy": 0.969,
                                       "robust_accuracy": {"fgsm": 0.85, "pgd20": 0.65, "cw": 0.65, "all": 0.63}}})
    assert table.splitlines() == [
        "accuracy (%) on 100 held-out examples, linf eps=0.3",
        "model | natural | fgsm | pgd20 | cw   | all",
        "------+---------+------+-------+------+-----",
        "ardir | 96.9    | 85.0 | 65.0  | 65.0 | 63.0",
    ]
