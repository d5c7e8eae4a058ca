"""Tests of the PyTorch -> Keras teacher converter (``ardir_tf.teachers``).

Parity is checked against RobustBench 1.1.1's own architecture classes, loaded from the installed
package's files by path (``import robustbench`` itself fails without its heavy optional deps), with
randomised weights and batch-norm statistics, in eval mode: logits max |diff| < 1e-4 and every stage
within 1e-4 relative (NCHW -> NHWC). Full-size ResNet-18s; WideResNets at reduced depth/width
through the same classes and code path (WRN-70-16 is ``DMWideResNet`` with more blocks).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import torch  # requirements-dev.txt installs it (and robustbench) for these tests

from ardir_tf import models
from ardir_tf.teachers import (
    CheckpointError,
    convert,
    convert_teacher,
    parse_architecture,
    read_provenance,
    zoo,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _robustbench_module(filename: str):
    spec = importlib.util.find_spec("robustbench")  # locates the package without importing it
    assert spec is not None, "requirements-dev.txt installs robustbench==1.1.1"
    path = os.path.join(spec.submodule_search_locations[0], "model_zoo", "architectures", filename)
    mod_spec = importlib.util.spec_from_file_location(f"rb_arch_{filename[:-3]}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rb():
    return {name: _robustbench_module(f"{name}.py") for name in ("wide_resnet", "dm_wide_resnet", "resnet")}


def _randomise(net: "torch.nn.Module", seed: int) -> "torch.nn.Module":
    """New random weights (He-scaled) and BN statistics far from their initial values; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.num_batches_tracked.fill_(1234)
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return net.eval()


def _stage_modules(net, family: str) -> list:
    if family == "wide_resnet":
        return [net.block1, net.block2, net.block3]
    if family == "dm_wide_resnet":
        return list(net.layer)
    if family == "dm_preact_resnet":
        return [net.layer_0, net.layer_1, net.layer_2, net.layer_3]
    return [net.layer1, net.layer2, net.layer3, net.layer4]


def _torch_outputs(net, family: str, images: np.ndarray):
    stages = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: stages.append(out.detach().numpy().transpose(0, 2, 3, 1)))
             for m in _stage_modules(net, family)]
    with torch.no_grad():
        logits = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    for h in hooks:
        h.remove()
    return logits, stages


def _keras_outputs(model: keras.Model, images: np.ndarray):
    names = models.stage_names(model)
    outs = models.feature_model(model, names)(images, training=False)
    return np.asarray(outs[0]), [np.asarray(o) for o in outs[1:]]


def _assert_parity(net, family, model, images):
    t_logits, t_stages = _torch_outputs(net, family, images)
    k_logits, k_stages = _keras_outputs(model, images)
    assert len(k_stages) == len(t_stages) and len(k_stages) >= 3
    assert np.abs(t_logits).max() > 1e-2  # random weights give non-trivial logits
    assert np.abs(k_logits - t_logits).max() < 1e-4
    for i, (k, t) in enumerate(zip(k_stages, t_stages), start=1):
        assert k.shape == t.shape, f"stage{i}"
        assert np.abs(k - t).max() / np.abs(t).max() < 1e-4, f"stage{i}"


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 32, 32, 3)).astype("float32")


PARITY_CASES = [
    # (id, robustbench file, factory, --arch, activation)
    ("trades_wrn_10_2_sub_block1", "wide_resnet", lambda rb: rb["wide_resnet"].WideResNet(depth=10, widen_factor=2, sub_block1=True), "wrn-10-2", None),
    ("trades_wrn_16_1", "wide_resnet", lambda rb: rb["wide_resnet"].WideResNet(depth=16, widen_factor=1), "wrn-16-1", None),
    ("dm_wrn_16_2_swish", "dm_wide_resnet",
     lambda rb: rb["dm_wide_resnet"].DMWideResNet(depth=16, width=2, activation_fn=rb["dm_wide_resnet"].Swish), "dm-wrn-16-2", "swish"),
    ("dm_wrn_10_1_relu", "dm_wide_resnet", lambda rb: rb["dm_wide_resnet"].DMWideResNet(depth=10, width=1), "dm-wrn-10-1", "relu"),
    # Wang2023/WRN-70-16's path (DMWideResNet with nn.SiLU), reduced to depth 22, width 1.
    ("dm_wrn_70_16_reduced_silu", "dm_wide_resnet",
     lambda rb: rb["dm_wide_resnet"].DMWideResNet(depth=22, width=1, activation_fn=torch.nn.SiLU), "dm-wrn-22-1", "swish"),
    ("dm_preact_resnet18_swish", "dm_preact_resnet",
     lambda rb: rb["dm_wide_resnet"].DMPreActResNet(depth=18, width=0, activation_fn=rb["dm_wide_resnet"].Swish), "dm-preact-resnet-18", "swish"),
    ("resnet18", "resnet18", lambda rb: rb["resnet"].ResNet18(), "resnet-18", None),
    ("preact_resnet18", "fast_preact_resnet18", lambda rb: rb["resnet"].PreActResNet18(), "preact-resnet-18", None),
]


@pytest.mark.parametrize("case", PARITY_CASES, ids=[c[0] for c in PARITY_CASES])
def test_parity_with_robustbench_classes(case, rb, tmp_path):
    name, family, factory, arch, activation = case
    torch.manual_seed(0)
    net = _randomise(factory(rb), seed=len(name))
    path = str(tmp_path / "ckpt.pt")
    torch.save(net.state_dict(), path)
    spec = parse_architecture(arch, activation)
    assert spec.builder == family
    model, provenance = convert(path, spec)
    _assert_parity(net, family, model, _images())
    assert provenance["checkpoint_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    if "sub_block1" in name:
        assert provenance["ignored_keys"] and all(k.startswith("sub_block1.") for k in provenance["ignored_keys"])
    else:
        assert provenance["ignored_keys"] == []


def test_dm_rn_wide_resnet_converts_as_dm_wrn(tmp_path):
    # dm_rn.py's WideResNet (used inside RobustBench's composite models) has DMWideResNet's parameter
    # names and arithmetic; its forward also returns the outputs of the first two block groups.
    dm_rn = _robustbench_module("dm_rn.py")
    net = _randomise(dm_rn.WideResNet(depth=10, width=2, activation_fn=dm_rn.Swish), seed=21)
    path = str(tmp_path / "ckpt.pt")
    torch.save(net.state_dict(), path)
    model, _ = convert(path, parse_architecture("dm-wrn-10-2"))
    images = _images()
    with torch.no_grad():
        logits, (feat1, feat2) = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    k_logits, k_stages = _keras_outputs(model, images)
    assert np.abs(k_logits - logits.numpy()).max() < 1e-4
    for k, t in zip(k_stages[:2], (feat1, feat2)):
        t = t.numpy().transpose(0, 2, 3, 1)
        assert np.abs(k - t).max() / np.abs(t).max() < 1e-4


def test_saved_teacher_loads_in_safe_mode_with_provenance(rb, tmp_path):
    dm = rb["dm_wide_resnet"]
    net = _randomise(dm.DMWideResNet(depth=10, width=1, activation_fn=dm.Swish), seed=3)
    # Wrapped as a training script saves it: under "state_dict", with DataParallel's "module." prefix.
    path = str(tmp_path / "ckpt.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    out = str(tmp_path / "teacher.keras")
    model, provenance = convert_teacher(checkpoint=path, arch="dm-wrn-10-1", out=out)
    loaded = keras.models.load_model(out, safe_mode=True)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    _assert_parity(net, "dm_wide_resnet", loaded, _images(3, seed=1))
    stored = read_provenance(out)
    beside = json.load(open(str(tmp_path / "teacher.json")))
    assert stored == beside
    assert stored["checkpoint_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert stored["normalization"] == {"mean": list(zoo.CIFAR10_MEAN), "std": list(zoo.CIFAR10_STD)}
    assert stored["stages"] == ["stage1", "stage2", "stage3"] and stored["published"] is None
    assert stored["checkpoint_dtypes"] == ["float32", "int64"] and stored["ignored_keys"] == []
    assert models.default_ir_layers(loaded) == ["stage3"]
    # Distilling it: a ResNet-18's last stage (4x4) cannot be pooled onto the WRN's 8x8 stage3, its
    # stage3 (8x8) can, through a 1x1-conv connector; MobileNetV2's 8x8 stage is stage5.
    from ardir_tf.methods import ARDIR

    kw = dict(epsilon=8 / 255, attack_steps=1, attack_step_size=2 / 255, seed=0)
    student = models.get("resnet18", 10, (32, 32, 3), width=8)
    with pytest.raises(ValueError, match="cannot be connected"):
        ARDIR(student, loaded, **kw)
    trainer = ARDIR(student, loaded, ir_layers=["stage3:stage3"], **kw)
    assert trainer.layer_pairs == [("stage3", "stage3")]
    assert tuple(trainer.connectors[0](np.zeros((1, 8, 8, 32), "float32")).shape) == (1, 8, 8, 64)
    mobile = models.get("mobilenet_v2", 10, (32, 32, 3), alpha=0.25)
    assert ARDIR(mobile, loaded, ir_layers=["stage5:stage3"], **kw).layer_pairs == [("stage5", "stage3")]


def _write_state(tmp_path, state, name="bad.pt") -> str:
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def small_wrn_state(rb):
    return _randomise(rb["wide_resnet"].WideResNet(depth=10, widen_factor=2), seed=5).state_dict()


def test_missing_unexpected_and_misshapen_keys_are_named(small_wrn_state, tmp_path):
    arch = parse_architecture("wrn-10-2")
    missing = dict(small_wrn_state)
    del missing["block2.layer.0.conv1.weight"]
    with pytest.raises(CheckpointError, match=r"missing key 'block2\.layer\.0\.conv1\.weight'"):
        convert(_write_state(tmp_path, missing), arch)
    extra = {**small_wrn_state, "head.extra.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected key 'head\.extra\.weight'"):
        convert(_write_state(tmp_path, extra), arch)
    with pytest.raises(CheckpointError, match=r"key 'block1\.layer\.0\.conv1\.weight' has shape \(32, 16, 3, 3\), "
                                              r"the architecture needs \(16, 16, 3, 3\)"):
        convert(_write_state(tmp_path, small_wrn_state), parse_architecture("wrn-10-1"))
    with pytest.raises(CheckpointError, match=r"missing key 'init_conv\.weight'"):  # another architecture
        convert(_write_state(tmp_path, small_wrn_state), parse_architecture("dm-wrn-10-2"))


def test_normalisation_buffers_must_match(rb, tmp_path):
    state = _randomise(rb["resnet"].PreActResNet18(), seed=9).state_dict()
    mu = torch.tensor(zoo.CIFAR10_MEAN).view(1, 3, 1, 1)
    sigma = torch.tensor(zoo.CIFAR10_STD).view(1, 3, 1, 1)
    good = _write_state(tmp_path, {**state, "mu": mu, "sigma": sigma}, "good.pt")
    norm = (zoo.CIFAR10_MEAN, zoo.CIFAR10_STD)
    convert(good, parse_architecture("preact-resnet-18", normalization=norm))
    with pytest.raises(CheckpointError, match=r"key 'sigma' = .* differs"):
        convert(good, parse_architecture("preact-resnet-18", normalization=(zoo.CIFAR10_MEAN, (0.5, 0.5, 0.5))))
    with pytest.raises(CheckpointError, match=r"unexpected key 'mu'"):
        convert(good, parse_architecture("preact-resnet-18"))


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused(small_wrn_state, tmp_path):
    marker = tmp_path / "pwned"
    path = _write_state(tmp_path, {**small_wrn_state, "payload": _Payload(str(marker))}, "evil.pt")
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refused .*Unsupported global") as err:
        convert(path, parse_architecture("wrn-10-2"))
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # The payload is real: a plain torch.load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_torch_says_what_to_install(monkeypatch, tmp_path, small_wrn_state):
    path = _write_state(tmp_path, small_wrn_state)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CheckpointError, match=r"pip install 'ardir-tf\[teachers\]'"):
        convert(path, parse_architecture("wrn-10-2"))


def test_download_without_robustbench_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(ValueError, match="Install RobustBench") as err:
        zoo.download("Wang2023Better_WRN-28-10", str(tmp_path))
    assert "cifar10/Linf/Wang2023Better_WRN-28-10.pt" in str(err.value)
    assert not any(tmp_path.iterdir())


def test_zoo_table():
    for entry in zoo.ENTRIES:
        spec = parse_architecture(entry.arch, normalization=entry.normalization)
        assert spec.builder in models.available()
        assert entry.clean_accuracy is None or 0 < entry.clean_accuracy <= 100
        assert entry.autoattack_accuracy is None or 0 <= entry.autoattack_accuracy <= (entry.clean_accuracy or 100)
    wang = zoo.lookup("Wang2023Better_WRN-28-10")
    assert (wang.arch, wang.clean_accuracy, wang.autoattack_accuracy) == ("dm-wrn-28-10", 92.44, 67.31)
    assert parse_architecture(wang.arch).options == {"depth": 28, "width": 10, "activation": "swish"}
    assert zoo.lookup("Zhang2019Theoretically").arch == "wrn-34-10"
    assert zoo.checkpoint_path("m", "Standard") == os.path.join("m", "cifar10", "Linf", "Standard.pt")
    with pytest.raises(ValueError, match="not in the table"):
        zoo.lookup("NoSuchModel2030")


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "ardir_tf.teachers", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_model_name_reads_the_robustbench_layout(rb, tmp_path, monkeypatch):
    # Andriushchenko2020Understanding is a PreActResNet18 stored under the checkpoint's "last" key.
    net = _randomise(rb["resnet"].PreActResNet18(), seed=11)
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    ckpt = folder / "Andriushchenko2020Understanding.pt"
    torch.save({"last": net.state_dict(), "best": {}}, str(ckpt))
    out = tmp_path / "teacher.keras"
    monkeypatch.chdir(tmp_path)
    convert_teacher(model_name="Andriushchenko2020Understanding", model_dir="models", out=str(out))
    prov = read_provenance(str(out))
    assert prov["source"] == "Andriushchenko2020Understanding" and prov["architecture"] == "preact-resnet-18"
    assert prov["published"]["clean_accuracy"] == 79.84 and prov["published"]["autoattack_accuracy"] == 43.93
    assert prov["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    _assert_parity(net, "fast_preact_resnet18", keras.models.load_model(str(out), safe_mode=True), _images())
    with pytest.raises(ValueError, match="no checkpoint at"):
        convert_teacher(model_name="Wong2020Fast", model_dir="models", out=str(tmp_path / "w.keras"))


def test_cli_bad_checkpoint_exits_2_and_writes_nothing(small_wrn_state, tmp_path):
    state = dict(small_wrn_state)
    del state["fc.bias"]
    path = _write_state(tmp_path, state)
    out = tmp_path / "out" / "teacher.keras"
    result = _cli(f"--checkpoint={path}", "--arch=wrn-10-2", f"--out={out}", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "missing key 'fc.bias'" in lines[0]
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_training_and_serving_do_not_import_torch():
    code = ("import sys, ardir_tf.train, ardir_tf.evaluate, ardir_tf.teachers; "
            "bad = [m for m in ('torch', 'robustbench') if m in sys.modules]; assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
