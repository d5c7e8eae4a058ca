"""Shared checks that every model family must pass (in the style of KerasHub's test helpers).

Use from a test module with ``from model_checks import check_model`` (pytest puts ``tests/`` on
``sys.path``).
"""

from __future__ import annotations

import pathlib
import re
from typing import Sequence

import keras
import numpy as np

import ardir_tf.models as models

_STAGE = re.compile(r"^stage(\d+)$")


def _numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t))


def check_model(
    model: keras.Model,
    input_shape: Sequence[int],
    num_classes: int,
    tmp_path: pathlib.Path,
    batch_size: int = 2,
) -> None:
    """Asserts the library's model contract on ``model``.

    Checks that

    * a random ``[batch_size, *input_shape]`` batch in [0, 1] gives ``[batch_size, num_classes]``
      finite logits, from a linear ``Dense`` layer named ``logits``;
    * the model has ``stage1`` .. ``stageN`` (consecutive, as listed by
      :func:`ardir_tf.models.stage_names`), each with a 4-D output, and the highest is the default
      IR layer;
    * :func:`ardir_tf.models.feature_model` on every stage returns logits identical to ``model(x)``
      and one ``[batch_size, H, W, C]`` tensor per stage;
    * saving to ``tmp_path / "m.keras"`` and loading with ``safe_mode=True`` gives the same layer
      names and the same outputs (``atol=1e-6``).

    Args:
        model: a functional classifier built by :func:`ardir_tf.models.get`.
        input_shape: ``(H, W, C)`` of its input.
        num_classes: expected number of logits.
        tmp_path: a writable directory (pytest's ``tmp_path``).
        batch_size: examples in the random batch.
    """
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(batch_size, *input_shape)).astype("float32")

    # Output contract.
    logits = _numpy(model(x, training=False))
    assert logits.shape == (batch_size, num_classes), logits.shape
    assert np.all(np.isfinite(logits))
    head = model.get_layer("logits")
    assert isinstance(head, keras.layers.Dense), type(head)
    assert head.get_config()["activation"] == "linear", "the model must output logits, not probabilities"
    assert model.outputs[0] is head.output, "the `logits` layer must produce the model output"

    # Named stages.
    stages = models.stage_names(model)
    assert stages, f"model {model.name!r} has no stage1..stageN layers"
    assert stages == [f"stage{i}" for i in range(1, len(stages) + 1)], stages
    assert all(_STAGE.match(s) for s in stages)
    known = models.layer_names(model)
    for s in stages:
        assert s in known, s
        assert len(model.get_layer(s).output.shape) == 4, (s, model.get_layer(s).output.shape)
    assert models.default_ir_layers(model) == [stages[-1]]

    # Feature model: one pass, logits identical to the classifier's.
    features = models.feature_model(model, stages)
    outs = features(x, training=False)
    assert len(outs) == 1 + len(stages)
    np.testing.assert_allclose(_numpy(outs[0]), logits, rtol=0, atol=1e-6)
    for s, ir in zip(stages, outs[1:]):
        ir = _numpy(ir)
        assert ir.ndim == 4, (s, ir.shape)
        assert ir.shape[0] == batch_size
        assert ir.shape[1:] == tuple(model.get_layer(s).output.shape[1:]), (s, ir.shape)

    # Safe-mode save/load round trip.
    path = pathlib.Path(tmp_path) / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(_numpy(loaded(x, training=False)), logits, rtol=0, atol=1e-6)
    assert models.stage_names(loaded) == stages
