"""The RobustBench CIFAR-10 L-inf (eps = 8/255) entries this project converts, by zoo name.

Each entry names the architecture of the checkpoint (as RobustBench 1.1.1's
``model_zoo/cifar10.py`` builds it) and the clean and AutoAttack accuracies (percent, on the
10,000 CIFAR-10 test images) that the RobustBench leaderboard publishes for it, as listed in the
model-zoo table of ``robustbench`` 1.1.1's README. ``None`` would mean "not published there"; every
entry below has both numbers. Entries whose architecture the project does not rebuild (ensembles,
ResNeSt, XCiT, RaWideResNet, MeanSparse, per-image normalisation, ...) are not listed.

``robustbench.utils.load_model(model_name, model_dir=DIR, dataset="cifar10", threat_model="Linf")``
stores a checkpoint as ``DIR/cifar10/Linf/<name>.pt``: :func:`checkpoint_path` reads that layout.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from ardir_tf.teachers.architectures import CIFAR10_MEAN, CIFAR10_STD, Normalization

DATASET = "cifar10"
THREAT_MODEL = "Linf"
EPSILON = 8 / 255
SOURCE = "RobustBench CIFAR-10 Linf leaderboard, as listed in the robustbench 1.1.1 README"

_CIFAR10: Normalization = (CIFAR10_MEAN, CIFAR10_STD)
# Hendrycks2019Using computes 2 x - 1 = (x - 0.5) / 0.5.
_HALF: Normalization = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A zoo checkpoint: its architecture and published numbers.

    Attributes:
        name: the RobustBench model name (``Wang2023Better_WRN-28-10``).
        arch: the ``--arch`` name (:func:`ardir_tf.teachers.architectures.parse_architecture`).
        clean_accuracy: published clean accuracy in percent, or ``None``.
        autoattack_accuracy: published AutoAttack accuracy in percent, or ``None``.
        paper: where the model is described.
        normalization: ``"default"`` (the architecture's) or an explicit ``(mean, std)``.
        checkpoint_key: the key of the state dict inside the file when it is neither the file
            itself nor its ``state_dict`` (``Andriushchenko2020Understanding``: ``last``).
    """

    name: str
    arch: str
    clean_accuracy: Optional[float]
    autoattack_accuracy: Optional[float]
    paper: str
    normalization: Normalization | str = "default"
    checkpoint_key: Optional[str] = None


def _entry(name, arch, clean, autoattack, paper, normalization="default", checkpoint_key=None) -> ZooEntry:
    return ZooEntry(name, arch, clean, autoattack, paper, normalization, checkpoint_key)


#: Sorted by published AutoAttack accuracy, best first.
ENTRIES: tuple[ZooEntry, ...] = (
    _entry("Bartoldson2024Adversarial_WRN-94-16", "dm-wrn-94-16", 93.68, 73.71, "https://arxiv.org/abs/2404.09349"),
    _entry("Bartoldson2024Adversarial_WRN-82-8", "dm-wrn-82-8", 93.11, 71.59, "https://arxiv.org/abs/2404.09349"),
    _entry("Wang2023Better_WRN-70-16", "dm-wrn-70-16", 93.25, 70.69, "https://arxiv.org/abs/2302.04638"),
    _entry("Cui2023Decoupled_WRN-28-10", "dm-wrn-28-10", 92.16, 67.73, "https://arxiv.org/abs/2305.13948"),
    _entry("Wang2023Better_WRN-28-10", "dm-wrn-28-10", 92.44, 67.31, "https://arxiv.org/abs/2302.04638"),
    _entry("Rebuffi2021Fixing_70_16_cutmix_extra", "dm-wrn-70-16", 92.23, 66.56, "https://arxiv.org/abs/2103.01946"),
    _entry("Gowal2021Improving_70_16_ddpm_100m", "dm-wrn-70-16", 88.74, 66.1, "https://arxiv.org/abs/2110.09468"),
    _entry("Gowal2020Uncovering_70_16_extra", "dm-wrn-70-16", 91.1, 65.87, "https://arxiv.org/abs/2010.03593"),
    _entry("Rebuffi2021Fixing_106_16_cutmix_ddpm", "dm-wrn-106-16", 88.5, 64.58, "https://arxiv.org/abs/2103.01946"),
    _entry("Rebuffi2021Fixing_70_16_cutmix_ddpm", "dm-wrn-70-16", 88.54, 64.2, "https://arxiv.org/abs/2103.01946"),
    _entry("Xu2023Exploring_WRN-28-10", "dm-wrn-28-10", 93.69, 63.89, "https://arxiv.org/abs/2302.03015"),
    _entry("Gowal2021Improving_28_10_ddpm_100m", "dm-wrn-28-10", 87.5, 63.38, "https://arxiv.org/abs/2110.09468"),
    _entry("Pang2022Robustness_WRN70_16", "dm-wrn-70-16", 89.01, 63.35, "https://arxiv.org/pdf/2202.10103.pdf"),
    _entry("Rade2021Helper_extra", "dm-wrn-34-10", 91.47, 62.83, "https://openreview.net/forum?id=BuD2LmNaU3a"),
    _entry("Gowal2020Uncovering_28_10_extra", "dm-wrn-28-10", 89.48, 62.76, "https://arxiv.org/abs/2010.03593"),
    _entry("Pang2022Robustness_WRN28_10", "dm-wrn-28-10", 88.61, 61.04, "https://arxiv.org/pdf/2202.10103.pdf"),
    _entry("Rade2021Helper_ddpm", "dm-wrn-28-10", 88.16, 60.97, "https://openreview.net/forum?id=BuD2LmNaU3a"),
    _entry("Rebuffi2021Fixing_28_10_cutmix_ddpm", "dm-wrn-28-10", 87.33, 60.73, "https://arxiv.org/abs/2103.01946"),
    _entry("Sridhar2021Robust_34_15", "wrn-34-15", 86.53, 60.41, "https://arxiv.org/abs/2106.02078"),
    _entry("Sehwag2021Proxy", "wrn-34-10", 86.68, 60.27, "https://arxiv.org/abs/2104.09425"),
    _entry("Wu2020Adversarial_extra", "wrn-28-10", 88.25, 60.04, "https://arxiv.org/abs/2004.05884"),
    _entry("Sridhar2021Robust", "wrn-28-10", 89.46, 59.66, "https://arxiv.org/abs/2106.02078"),
    _entry("Zhang2020Geometry", "wrn-28-10", 89.36, 59.64, "https://arxiv.org/abs/2010.01736"),
    _entry("Carmon2019Unlabeled", "wrn-28-10", 89.69, 59.53, "https://arxiv.org/abs/1905.13736"),
    _entry("Gowal2021Improving_R18_ddpm_100m", "dm-preact-resnet-18", 87.35, 58.5, "https://arxiv.org/abs/2110.09468"),
    _entry("Chen2024Data_WRN_34_20", "wrn-34-20", 86.1, 58.09, "https://doi.org/10.1016/j.patcog.2024.110394"),
    _entry("Addepalli2021Towards_WRN34", "wrn-34-10", 85.32, 58.04, "https://arxiv.org/abs/2210.09852"),
    _entry("Addepalli2022Efficient_WRN_34_10", "wrn-34-10", 88.71, 57.81, "https://arxiv.org/abs/2210.15318"),
    _entry("Chen2021LTD_WRN34_20", "wrn-34-20", 86.03, 57.71, "https://arxiv.org/abs/2111.02331"),
    _entry("Rade2021Helper_R18_extra", "dm-preact-resnet-18", 89.02, 57.67, "https://openreview.net/forum?id=BuD2LmNaU3a"),
    _entry("Jia2022LAS-AT_70_16", "wrn-70-16", 85.66, 57.61, "https://arxiv.org/abs/2203.06616"),
    _entry("Chen2024Data_WRN_34_10", "wrn-34-10", 86.54, 57.3, "https://doi.org/10.1016/j.patcog.2024.110394"),
    _entry("Sehwag2020Hydra", "wrn-28-10", 88.98, 57.14, "https://arxiv.org/abs/2002.10509"),
    _entry("Gowal2020Uncovering_70_16", "dm-wrn-70-16", 85.29, 57.14, "https://arxiv.org/abs/2010.03593"),
    _entry("Cui2023Decoupled_WRN-34-10", "wrn-34-10", 85.31, 57.09, "https://arxiv.org/abs/2305.13948"),
    _entry("Rade2021Helper_R18_ddpm", "dm-preact-resnet-18", 86.86, 57.09, "https://openreview.net/forum?id=BuD2LmNaU3a"),
    _entry("Chen2021LTD_WRN34_10", "wrn-34-10", 85.21, 56.94, "https://arxiv.org/abs/2111.02331"),
    _entry("Gowal2020Uncovering_34_20", "dm-wrn-34-20", 85.64, 56.82, "https://arxiv.org/abs/2010.03593"),
    _entry("Rebuffi2021Fixing_R18_ddpm", "dm-preact-resnet-18", 83.53, 56.66, "https://arxiv.org/abs/2103.01946"),
    _entry("Wang2020Improving", "wrn-28-10", 87.5, 56.29, "https://openreview.net/forum?id=rklOg6EFwS"),
    _entry("Jia2022LAS-AT_34_10", "wrn-34-10", 84.98, 56.26, "https://arxiv.org/abs/2203.06616"),
    _entry("Wu2020Adversarial", "wrn-34-10", 85.36, 56.17, "https://arxiv.org/abs/2004.05884"),
    _entry("Sehwag2021Proxy_R18", "resnet-18", 84.59, 55.54, "https://arxiv.org/abs/2104.09425"),
    _entry("Hendrycks2019Using", "wrn-28-10", 87.11, 54.92, "https://arxiv.org/abs/1901.09960", normalization=_HALF),
    _entry("Cui2020Learnable_34_20", "wrn-34-20", 88.7, 53.57, "https://arxiv.org/abs/2011.11164"),
    _entry("Zhang2020Attacks", "wrn-34-10", 84.52, 53.51, "https://arxiv.org/abs/2002.11242"),
    _entry("Rice2020Overfitting", "wrn-34-20", 85.34, 53.42, "https://arxiv.org/abs/2002.11569", normalization=_CIFAR10),
    _entry("Huang2020Self", "wrn-34-10", 83.48, 53.34, "https://arxiv.org/abs/2002.10319"),
    _entry("Zhang2019Theoretically", "wrn-34-10", 84.92, 53.08, "https://arxiv.org/abs/1901.08573"),
    _entry("Cui2020Learnable_34_10", "wrn-34-10", 88.22, 52.86, "https://arxiv.org/abs/2011.11164"),
    _entry("Addepalli2022Efficient_RN18", "resnet-18", 85.71, 52.48, "https://arxiv.org/abs/2210.15318"),
    _entry("Addepalli2021Towards_RN18", "resnet-18", 80.24, 51.06, "https://arxiv.org/abs/2210.09852"),
    _entry("Sitawarin2020Improving", "wrn-34-10", 86.84, 50.72, "https://arxiv.org/abs/2003.09347"),
    _entry("Zhang2019You", "wrn-34-10", 87.2, 44.83, "https://arxiv.org/abs/1905.00877"),
    _entry("Andriushchenko2020Understanding", "preact-resnet-18", 79.84, 43.93, "https://arxiv.org/abs/2007.02617", checkpoint_key="last"),
    _entry("Wong2020Fast", "preact-resnet-18", 83.34, 43.21, "https://arxiv.org/abs/2001.03994", normalization=_CIFAR10),
    _entry("Standard", "wrn-28-10", 94.78, 0.0, "https://github.com/RobustBench/robustbench/"),
)

ZOO: dict[str, ZooEntry] = {e.name: e for e in ENTRIES}


def lookup(name: str) -> ZooEntry:
    """The entry ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in ZOO:
        raise ValueError(
            f"--model_name={name!r} is not in the table of convertible CIFAR-10 Linf entries; known: "
            f"{', '.join(sorted(ZOO))} (for another checkpoint give --checkpoint and --arch)"
        )
    return ZOO[name]


def checkpoint_path(model_dir: str, name: str) -> str:
    """``<model_dir>/cifar10/Linf/<name>.pt``, the layout ``robustbench.utils.load_model`` writes."""
    return os.path.join(model_dir, DATASET, THREAT_MODEL, f"{name}.pt")


def download(name: str, model_dir: str) -> str:
    """Downloads ``name`` into ``model_dir`` through RobustBench itself (needs the network).

    Returns:
        The checkpoint path (:func:`checkpoint_path`).

    Raises:
        ValueError: RobustBench or torch is not importable (the message says what to install).
    """
    lookup(name)
    try:
        from robustbench.utils import load_model
    except Exception as err:  # ImportError, or robustbench's own import-time failures
        raise ValueError(
            f"downloading needs an importable robustbench; `import robustbench.utils` failed with "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Install RobustBench as its "
            "README says (pip install git+https://github.com/RobustBench/robustbench.git, with torch), or "
            f"fetch the checkpoint on another machine and put it at {checkpoint_path('<model_dir>', name)}"
        ) from None
    load_model(model_name=name, model_dir=model_dir, dataset=DATASET, threat_model=THREAT_MODEL)
    return checkpoint_path(model_dir, name)
