"""The RobustBench CIFAR architectures the converter knows, and how their PyTorch parameter names
map onto the layers of this project's builders.

An architecture is named on the command line (``--arch``):

=========================  ==============================================  ===========================
``--arch``                 RobustBench class (``model_zoo/architectures``)  builder (``ardir_tf.models``)
=========================  ==============================================  ===========================
``wrn-D-K``                ``WideResNet`` (``wide_resnet.py``)              ``wide_resnet``
``dm-wrn-D-K``             ``DMWideResNet`` (``dm_wide_resnet.py``)         ``dm_wide_resnet``
``dm-preact-resnet-18``    ``DMPreActResNet`` (``dm_wide_resnet.py``)       ``dm_preact_resnet``
``resnet-18``              ``ResNet18`` (``resnet.py``)                     ``resnet18``
``preact-resnet-18``       ``PreActResNet18`` (``resnet.py``)               ``fast_preact_resnet18``
=========================  ==============================================  ===========================

``D`` is the depth (``6 n + 4``) and ``K`` the widening factor. The DeepMind models use Swish by
default (``activation="swish"``; ``nn.SiLU`` in newer entries is the same function) and normalise
their input with the CIFAR-10 mean/std; the others take raw [0, 1] pixels unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
Normalization = Optional[tuple[tuple[float, ...], tuple[float, ...]]]

_DM_DEFAULT = (CIFAR10_MEAN, CIFAR10_STD)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One source architecture with its options.

    Attributes:
        name: the ``--arch`` spelling (``wrn-34-10``, ``dm-wrn-70-16``, ...).
        builder: the ``ardir_tf.models`` registry name that rebuilds it in Keras.
        options: the builder's keyword options (depth, width, activation).
        normalization: ``(mean, std)`` applied inside the model to [0, 1] images, or ``None``.
        ignored_prefixes: checkpoint key prefixes of parameters the source's ``forward`` never
            uses (the TRADES ``WideResNet``'s ``sub_block1``); they are skipped and recorded.
    """

    name: str
    builder: str
    options: dict
    normalization: Normalization = None
    ignored_prefixes: tuple[str, ...] = ()

    def torch_prefix(self, layer_name: str) -> str:
        """The PyTorch module path holding the parameters of the Keras layer ``layer_name``."""
        return _TRANSLATORS[self.builder](layer_name)


_PATTERNS = (
    (re.compile(r"^wrn-(\d+)-(\d+)$"), "wide_resnet"),
    (re.compile(r"^dm-wrn-(\d+)-(\d+)$"), "dm_wide_resnet"),
)
_FIXED = {
    "dm-preact-resnet-18": ("dm_preact_resnet", {"depth": 18}),
    "resnet-18": ("resnet18", {}),
    "preact-resnet-18": ("fast_preact_resnet18", {}),
}
ARCH_NAMES = ("wrn-D-K", "dm-wrn-D-K", *_FIXED)


def parse_architecture(
    name: str,
    activation: Optional[str] = None,
    normalization: Normalization | str = "default",
) -> Architecture:
    """Parses an ``--arch`` name.

    Args:
        name: ``wrn-D-K``, ``dm-wrn-D-K``, ``dm-preact-resnet-18``, ``resnet-18`` or
            ``preact-resnet-18``.
        activation: ``"relu"`` or ``"swish"`` for the DeepMind models (default ``"swish"``, the
            zoo's); the other families are ReLU-only.
        normalization: ``"default"`` (CIFAR-10 mean/std for the DeepMind models, none for the
            others), ``None`` (none) or an explicit ``(mean, std)``.

    Raises:
        ValueError: an unknown name, a bad depth, or an activation the family does not have.
    """
    key = name.strip().lower()
    builder, options = None, {}
    for pattern, family in _PATTERNS:
        if m := pattern.match(key):
            depth, width = int(m.group(1)), int(m.group(2))
            if depth < 10 or (depth - 4) % 6 or width < 1:
                raise ValueError(f"--arch={name}: a WideResNet needs depth 6 n + 4 (10, 16, 22, 28, 34, ...) and width >= 1")
            builder, options = family, {"depth": depth, "width": width}
    if builder is None and key in _FIXED:
        builder, options = _FIXED[key][0], dict(_FIXED[key][1])
    if builder is None:
        raise ValueError(f"unknown --arch {name!r}; known: {', '.join(ARCH_NAMES)}")
    dm = builder.startswith("dm_")
    if dm:
        options["activation"] = activation or "swish"
    elif activation not in (None, "relu"):
        raise ValueError(f"--arch={name} is ReLU-only; --activation={activation} applies to the dm-* architectures")
    if isinstance(normalization, str):
        if normalization != "default":
            raise ValueError(f"normalization must be 'default', None or (mean, std), got {normalization!r}")
        normalization = _DM_DEFAULT if dm else None
    elif normalization is not None:
        mean, std = normalization
        normalization = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    ignored = ("sub_block1.",) if builder == "wide_resnet" else ()
    return Architecture(key, builder, options, normalization, ignored)


# --- Keras layer name -> PyTorch module path, one translator per builder -----------------------

_BLOCK = re.compile(r"^stage(\d+)_block(\d+)_(\w+)$")


def _translator(stem: dict, head: dict, block: Callable[[int, int], str], parts: dict) -> Callable[[str], str]:
    def translate(layer: str) -> str:
        if layer in stem:
            return stem[layer]
        if layer in head:
            return head[layer]
        m = _BLOCK.match(layer)
        if m and m.group(3) in parts:
            return f"{block(int(m.group(1)), int(m.group(2)))}.{parts[m.group(3)]}"
        raise KeyError(f"no PyTorch counterpart for Keras layer {layer!r}")

    return translate


_TRANSLATORS: dict[str, Callable[[str], str]] = {
    "wide_resnet": _translator(
        {"stem_conv": "conv1"}, {"final_bn": "bn1", "logits": "fc"},
        lambda i, j: f"block{i}.layer.{j - 1}",
        {"bn1": "bn1", "conv1": "conv1", "bn2": "bn2", "conv2": "conv2", "shortcut_conv": "convShortcut"},
    ),
    "dm_wide_resnet": _translator(
        {"stem_conv": "init_conv"}, {"final_bn": "batchnorm", "logits": "logits"},
        lambda i, j: f"layer.{i - 1}.block.{j - 1}",
        {"bn1": "batchnorm_0", "conv1": "conv_0", "bn2": "batchnorm_1", "conv2": "conv_1", "shortcut_conv": "shortcut"},
    ),
    "dm_preact_resnet": _translator(
        {"stem_conv": "conv_2d"}, {"final_bn": "batchnorm", "logits": "logits"},
        lambda i, j: f"layer_{i - 1}.{j - 1}",
        {"bn1": "batchnorm_0", "conv1": "conv_2d_1", "bn2": "batchnorm_1", "conv2": "conv_2d_2",
         "shortcut_conv": "shortcut"},
    ),
    "resnet18": _translator(
        {"stem_conv": "conv1", "stem_bn": "bn1"}, {"logits": "linear"},
        lambda i, j: f"layer{i}.{j - 1}",
        {"conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2", "shortcut_conv": "shortcut.0",
         "shortcut_bn": "shortcut.1"},
    ),
    "fast_preact_resnet18": _translator(
        {"stem_conv": "conv1"}, {"logits": "linear"},
        lambda i, j: f"layer{i}.{j - 1}",
        {"bn1": "bn1", "conv1": "conv1", "bn2": "bn2", "conv2": "conv2", "shortcut_conv": "shortcut.0"},
    ),
}


def describe(arch: Architecture) -> str:
    """One line: ``dm-wrn-28-10 (dm_wide_resnet depth=28 width=10 activation=swish)``."""
    opts = " ".join(f"{k}={v}" for k, v in arch.options.items())
    return f"{arch.name} ({arch.builder}{' ' + opts if opts else ''})"


def normalization_dict(norm: Normalization) -> Optional[dict]:
    return None if norm is None else {"mean": list(norm[0]), "std": list(norm[1])}

