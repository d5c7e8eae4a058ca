"""The shipped CIFAR-10 flagfiles: they hold the reference settings of docs/methods.md, set only
flags their method uses, and each runs a few steps on mock CIFAR-10 data (tfds.testing.mock_data)."""

from __future__ import annotations

import math

import pytest
import tensorflow_datasets as tfds
from absl import flags

from ardir_tf import cli, models, train

REFERENCE = {
    "cifar_teacher.flags": dict(method="pgd_at", model="resnet18", epochs=200, lr_decay_epochs=["100", "150"]),
    "cifar.flags": dict(method="ardir", model="resnet18", epochs=200, ir_layers=["stage4:stage4"], ardir_base="ard"),
    "ard.flags": dict(method="ard", epochs=200, lr_decay_epochs=["100"], temperature=30.0, alpha=1.0,
                      kl_reduction="elementmean", attack_bn_training=True, random_start="uniform"),
    "rslad.flags": dict(method="rslad", epochs=300, lr_decay_epochs=["215", "260", "285"], random_start="normal",
                        attack_bn_training=False, kl_reduction="elementmean", rslad_adversarial_weight=5 / 6),
    "iad.flags": dict(method="iad", epochs=200, temperature=1.0, alpha=1.0, iad_beta=0.1, iad_begin=60,
                      attack_bn_training=True),
}
COMMON = dict(dataset="cifar10", optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=2e-4,
              weight_decay_mode="l2", batch_size=128, attack_steps=10, epsilon_warmup_epochs=0.0)


def parse(name: str, *extra: str) -> dict:
    return parse_with_explicit(name, *extra)[0]


def parse_with_explicit(name: str, *extra: str) -> tuple[dict, list[str]]:
    """The settings of flagfile ``name`` (plus ``extra`` flags) and the names it sets."""
    fv = flags.FlagValues()
    train.define_flags(fv)
    fv(["prog", f"--flagfile={cli.packaged_flagfile(name)}", *extra])
    return train.settings_from_flags(fv), [n for n in train.settings_from_flags(fv) if fv[n].present]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_flagfile_sets_only_flags_its_method_uses(name):
    values, explicit = parse_with_explicit(name)
    assert "method" in explicit and "epsilon" in explicit
    train.check_settings_used(values, explicit)  # raises for a flag the method would ignore


def test_a_flag_added_to_a_flagfile_that_its_method_ignores_is_refused():
    values, explicit = parse_with_explicit("rslad.flags", "--temperature=3")
    with pytest.raises(ValueError, match="--temperature is not used by --method=rslad"):
        train.check_settings_used(values, explicit)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_flagfile_holds_the_reference_settings(name):
    values = parse(name)
    for key, expected in {**COMMON, **REFERENCE[name]}.items():
        assert values[key] == expected, (name, key, values[key])
    assert math.isclose(values["epsilon"], 8 / 255) and math.isclose(values["attack_step_size"], 2 / 255)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_flagfile_runs_on_mock_cifar10(name, tmp_path, monkeypatch):
    values = parse(name)
    monkeypatch.chdir(tmp_path)
    if values["teacher"]:
        path = tmp_path / values["teacher"]
        path.parent.mkdir(parents=True)
        models.get("resnet18", 10, (32, 32, 3), width=4).save(path)
    values.update(epochs=1, train_examples=64, batch_size=32, model_options="width=4", val_examples=16,
                  eval_examples=16, eval_attacks=["fgsm"], attack_steps=2, progress="none")
    with tfds.testing.mock_data(num_examples=64):
        rows = train.run(values)
    result = rows[values["method"]]
    assert result["dataset"] == "cifar10" and result["examples"] == 16
    assert 0.0 <= result["robust_accuracy"]["fgsm"] <= result["natural_accuracy"] + 1e-9
    assert (tmp_path / values["workdir"] / "model.keras").exists()
