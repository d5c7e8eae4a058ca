"""Tests of the model families, the registry and the feature wrapper."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from model_checks import check_model

import ardir_tf.models as models

# Tiny variants so that every family builds and runs in well under a second.
SMALL_OPTIONS = {
    "small_cnn": {},
    "resnet18": {"width": 8},
    "preact_resnet18": {"width": 8},
    "wide_resnet": {"depth": 10, "width": 1},
    "mobilenet_v2": {"alpha": 0.25},
    "dm_wide_resnet": {"depth": 10, "width": 1},
}
INPUT_SHAPES = {"small_cnn": (28, 28, 1)}
LAST_STAGE = {
    "small_cnn": "stage2",
    "resnet18": "stage4",
    "preact_resnet18": "stage4",
    "wide_resnet": "stage3",
    "mobilenet_v2": "stage7",
    "dm_wide_resnet": "stage3",
    "dm_preact_resnet": "stage4",
    "fast_preact_resnet18": "stage4",
}
CIFAR = (32, 32, 3)


def _build(name: str, num_classes: int = 10, input_shape=None, **overrides) -> keras.Model:
    shape = input_shape or INPUT_SHAPES.get(name, CIFAR)
    options = {**SMALL_OPTIONS.get(name, {}), **overrides}
    return models.get(name, num_classes, shape, **options)


def _trainable_count(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_registry_lists_the_families():
    assert set(LAST_STAGE) <= set(models.available())
    assert models.available() == sorted(models.available())


@pytest.mark.parametrize("name", models.available())
def test_model_contract(name, tmp_path):
    keras.utils.set_random_seed(0)
    shape = INPUT_SHAPES.get(name, CIFAR)
    model = _build(name, num_classes=7, input_shape=shape)
    check_model(model, shape, 7, tmp_path)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wide_resnet", "mobilenet_v2"])
def test_cifar_families_accept_other_sizes(name):
    # Odd spatial sizes (28 -> 14 -> 7 -> 4) and one channel.
    model = _build(name, num_classes=3, input_shape=(28, 28, 1))
    x = np.random.default_rng(0).uniform(0, 1, size=(2, 28, 28, 1)).astype("float32")
    assert tuple(model(x, training=False).shape) == (2, 3)
    last = model.get_layer(models.stage_names(model)[-1]).output.shape
    assert tuple(last[1:3]) == ((7, 7) if name == "wide_resnet" else (4, 4))


@pytest.mark.parametrize("name", models.available())
def test_default_ir_layer_is_last_stage(name):
    model = _build(name)
    stages = models.stage_names(model)
    assert models.default_ir_layers(model) == [stages[-1]]
    if name in LAST_STAGE:
        assert stages[-1] == LAST_STAGE[name]


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wide_resnet", "mobilenet_v2"])
def test_cifar_stage_shapes(name):
    model = _build(name)
    last = model.get_layer(models.stage_names(model)[-1]).output.shape
    assert tuple(last[1:3]) == ((8, 8) if name == "wide_resnet" else (4, 4))
    assert tuple(model.get_layer(models.stage_names(model)[0]).output.shape[1:3]) == (32, 32)


def test_block_naming_convention():
    model = _build("resnet18")
    names = models.layer_names(model)
    for i in range(1, 5):
        assert f"stage{i}_block1_out" in names
        assert f"stage{i}" in names
        assert f"stage{i}_block2_out" not in names  # the last block's output is `stage{i}`
    for n in ("stem_conv", "stem_bn", "stem_relu", "stage2_block1_shortcut_conv", "pool", "logits"):
        assert n in names, n
    assert "stage1_block1_shortcut_conv" not in names
    preact = _build("preact_resnet18")
    assert {"final_bn", "final_relu"} <= set(models.layer_names(preact))
    assert isinstance(preact.get_layer("stage4"), keras.layers.Add)
    wrn = _build("wide_resnet", depth=16, dropout=0.3)
    wrn_names = models.layer_names(wrn)
    assert {"stage3_block1_out", "stage3", "stage1_block2_dropout", "final_relu"} <= set(wrn_names)
    assert "stage3_block2_out" not in wrn_names


def test_unknown_model_name_lists_available():
    with pytest.raises(ValueError) as err:
        models.get("resnet1000", 10, CIFAR)
    for name in models.available():
        assert name in str(err.value)


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match=r"\(depth - 4\) % 6"):
        models.get("wide_resnet", 10, CIFAR, depth=33, width=1)
    with pytest.raises(ValueError, match="depth"):
        models.get("wide_resnet", 10, CIFAR, depth=4, width=1)


def test_feature_model_bad_layer_lists_names():
    model = _build("resnet18")
    with pytest.raises(models.UnknownLayerError) as err:
        models.feature_model(model, ["stage4", "no_such_layer"])
    message = str(err.value)
    assert "no_such_layer" in message
    for existing in ("stage1", "stage4", "stem_conv", "logits"):
        assert existing in message


def test_feature_model_shares_weights():
    model = _build("wide_resnet")
    features = models.feature_model(model, ["stage2"])
    assert {id(w) for w in features.weights} == {id(w) for w in model.weights}


MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2471, 0.2435, 0.2616)


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet"])
def test_normalization_layer(name):
    keras.utils.set_random_seed(1)
    plain = _build(name)
    normed = _build(name, normalization=(MEAN, STD))
    assert "normalize" in models.layer_names(normed)
    assert "normalize" not in models.layer_names(plain)

    x = np.random.default_rng(0).uniform(0, 1, size=(2, *CIFAR)).astype("float32")
    expected = (x - np.asarray(MEAN, "float32")) / np.asarray(STD, "float32")
    normalize = keras.Model(normed.inputs, normed.get_layer("normalize").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalize(x)), expected, rtol=1e-5, atol=1e-5)

    # Same weights everywhere else: the normalised model is the plain one on (x - mean) / std.
    for layer in plain.layers:
        if layer.weights:
            normed.get_layer(layer.name).set_weights(layer.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normed(x, training=False)),
        keras.ops.convert_to_numpy(plain(expected, training=False)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_normalization_rejects_non_positive_std():
    with pytest.raises(ValueError, match="std"):
        _build("resnet18", normalization=(MEAN, (0.2, 0.0, 0.2)))


def test_width_options_scale_channels():
    assert _build("resnet18", width=4).get_layer("stage4").output.shape[-1] == 32
    assert _build("wide_resnet", width=2).get_layer("stage3").output.shape[-1] == 128
    assert _build("mobilenet_v2", alpha=0.5).get_layer("stage7").output.shape[-1] == 160


def test_resnet18_full_size_param_count():
    # The PyTorch CIFAR ResNet-18 (ARD/RSLAD/IAD code) has 11,173,962 parameters for 10 classes;
    # Keras additionally counts the BN moving mean/variance (non-trainable).
    model = models.get("resnet18", 10, CIFAR)
    assert _trainable_count(model) == 11_173_962
    assert abs(model.count_params() - 11_173_962) / 11_173_962 < 0.01
    assert tuple(model.get_layer("stage4").output.shape) == (None, 4, 4, 512)


def test_preact_resnet18_full_size_param_count():
    # PyTorch PreActResNet18 (11,171,146) + the final BN (2 x 512).
    model = models.get("preact_resnet18", 10, CIFAR)
    assert _trainable_count(model) == 11_172_170


def test_wide_resnet_34_10_param_count():
    # The TRADES WRN-34-10 has 46,160,474 parameters for 10 classes.
    model = models.get("wide_resnet", 10, CIFAR)
    assert model.name == "wide_resnet_34_10"
    assert _trainable_count(model) == 46_160_474
    assert abs(model.count_params() - 46_160_474) / 46_160_474 < 0.01
    assert tuple(model.get_layer("stage3").output.shape) == (None, 8, 8, 640)


def test_mobilenet_v2_full_size_param_count():
    # Same trainable count as keras.applications.MobileNetV2 (alpha 1) with a 10-class head.
    model = models.get("mobilenet_v2", 10, CIFAR)
    assert _trainable_count(model) == 2_236_682
    assert tuple(model.get_layer("stage7").output.shape) == (None, 4, 4, 320)
