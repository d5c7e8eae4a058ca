"""The evaluation report: gradient-masking warnings, a Markdown summary and PNG plots, all made
from the results dict of :func:`ardir_tf.evaluate.evaluate` (or a ``results.json`` file).

``write_report(results, directory)`` writes ``results.json``, ``report.md``,
``per_class.png`` (natural and robust accuracy per class) and, when the results hold a sweep
over radii (``evaluate_sweep``, CLI ``--epsilons``), ``robust_vs_eps.png``. Also a CLI::

    python -m ardir_tf.report results.json --report_dir=report/
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from ardir_tf.io import write_json_atomic, write_text_atomic

#: accuracy differences smaller than this (half a point) are not reported as warnings
TOLERANCE = 0.005
#: accuracy above this at the masking check's radius (or the sweep's largest radius when it is at
#: least as large) counts as "not reaching ~0"
MAX_ACCURACY_AT_LARGE_EPS = 0.05
WHITE_BOX = ("fgsm", "pgd20", "cw", "apgd-ce", "apgd-t", "fab-t")


def command(results: dict, attacks: str) -> str:
    """The ``ardir_tf.evaluate`` command that re-runs ``results``' evaluation with ``attacks``."""
    parts = ["python -m ardir_tf.evaluate", f"--model={results.get('model_file') or 'MODEL.keras'}"]
    if results.get("dataset"):
        parts.append(f"--dataset={results['dataset']}")
    parts += [f"--norm={results.get('norm', 'linf')}", f"--epsilon={results.get('epsilon', 0.3):g}",
              f"--examples={results.get('examples', 1000)}", f"--attacks={attacks}"]
    return " ".join(parts)


def next_step(results: dict, version: Optional[str]) -> str:
    """What to run after an AutoAttack ``version`` that the warnings do not trust."""
    if version in ("plus", "rand"):
        return (f"this was already the {version} version: look for masking (FGSM vs PGD, the masking check, a sweep "
                "over eps) and report the number as an upper bound")
    if "autoattack_plus" in results.get("attacks", {}):
        return "the plus version ran too: trust autoattack_plus (and 'all') rather than this number"
    return f"run the stronger plus version next: {command(results, 'autoattack_plus')}"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _attack_keys(robust_accuracy: dict) -> list[str]:
    """Top-level attack names of a ``robust_accuracy`` dict (no ``all``, no ``x/member``)."""
    return [k for k in robust_accuracy if k != "all" and "/" not in k]


def masking_warnings(results: dict) -> list[str]:
    """One-line warnings for the usual signs of gradient masking in ``results``:

    * FGSM (one step) stronger than a multi-step white-box attack (PGD-20, CW, APGD-CE);
    * the black-box Square attack beating the white-box attacks: alone, below every white-box
      attack run; inside an AutoAttack ensemble, breaking examples that survived the white-box
      members before it (the warning then names the next command: the "plus" version after
      "standard");
    * accuracy not reaching ~0 at a large radius (the masking check, or the sweep's largest radius
      when it is at least that large), or rising with the radius in a sweep.

    Differences under :data:`TOLERANCE` are ignored.
    """
    out = []
    ra = results.get("robust_accuracy", {})
    if "fgsm" in ra:
        for strong in ("pgd20", "cw", "apgd-ce"):
            if strong in ra and ra["fgsm"] < ra[strong] - TOLERANCE:
                out.append(f"FGSM ({_pct(ra['fgsm'])}%) is stronger than {strong} ({_pct(ra[strong])}%): "
                           "a one-step attack beating an iterative one is a classic sign of gradient masking")
    white = {k: ra[k] for k in WHITE_BOX if k in ra}
    if "square" in ra and white and ra["square"] < min(white.values()) - TOLERANCE:
        best = min(white, key=white.get)
        out.append(f"the black-box Square attack ({_pct(ra['square'])}%) beats every white-box attack "
                   f"(best: {best}, {_pct(white[best])}%): gradients are probably masked; "
                   f"{next_step(results, None)}")
    examples = results.get("examples") or 0
    for name, info in results.get("attacks", {}).items():
        members = info.get("members") or {}
        if "square" not in members or name == "square" or not examples:  # Square alone: see above
            continue
        extra = members["square"]["broken"] / examples
        if extra > TOLERANCE:
            before = list(members)[:list(members).index("square")]
            out.append(f"inside AutoAttack ({name}), the black-box Square attack broke {_pct(extra)}% of the examples "
                       "that survived the white-box attacks before it" + (f" ({', '.join(before)})" if before else "")
                       + ": gradients are probably masked or the white-box budget is too small; "
                       + next_step(results, info.get("version")))
    check = results.get("masking_check")
    if check and check["robust_accuracy"] > MAX_ACCURACY_AT_LARGE_EPS:
        out.append(f"PGD-50 at eps={check['epsilon']:g} (where every image can be turned into the same gray image) "
                   f"leaves {_pct(check['robust_accuracy'])}% accuracy instead of ~0: gradients are probably masked")
    sweep = results.get("sweep") or []
    for prev, cur in zip(sweep[:-1], sweep[1:]):
        for key in _attack_keys(cur["robust_accuracy"]) + ["all"]:
            a, b = prev["robust_accuracy"].get(key), cur["robust_accuracy"].get(key)
            if a is not None and b is not None and b > a + TOLERANCE:
                out.append(f"{key}: robust accuracy rises from {_pct(a)}% at eps={prev['epsilon']:g} to {_pct(b)}% "
                           f"at eps={cur['epsilon']:g}: a stronger threat model must not help; the attack is failing")
    if sweep and check:
        last = sweep[-1]
        if last["epsilon"] >= check["epsilon"] and last["robust_accuracy"]["all"] > MAX_ACCURACY_AT_LARGE_EPS:
            out.append(f"robust accuracy is {_pct(last['robust_accuracy']['all'])}% at eps={last['epsilon']:g}, "
                       "not ~0: gradients are probably masked")
    return out


def markdown(results: dict, images: Sequence[str] = ()) -> str:
    """A Markdown summary of ``results``; ``images`` are PNG file names to link."""
    ra = results["robust_accuracy"]
    attacks = results.get("attacks", {})
    lines = [
        f"# Robustness report: {results.get('model') or 'model'}",
        "",
        f"- dataset: {results.get('dataset') or '-'}; {results['examples']} held-out examples",
        f"- threat model: {results['norm']} ball, eps = {results['epsilon']:g}",
        f"- natural accuracy: **{_pct(results['natural_accuracy'])}%**",
        f"- robust accuracy (an example counts only if it survives every attack): **{_pct(ra['all'])}%**",
        "",
        "## Attacks",
        "",
        "| attack | robust accuracy (%) | seconds | settings |",
        "|---|---:|---:|---|",
    ]
    for key in _attack_keys(ra):
        info = attacks.get(key, {})
        settings = ", ".join(f"{k}={v}" for k, v in info.items()
                             if k not in ("seconds", "members") and not isinstance(v, (list, dict)))
        lines.append(f"| {key} | {_pct(ra[key])} | {info.get('seconds', '-')} | {settings} |")
    for key in _attack_keys(ra):
        members = attacks.get(key, {}).get("members")
        if members and len(members) > 1:
            version = attacks.get(key, {}).get("version", "-")
            lines += ["", f"### {key} (version: {version}): accuracy after each member (cumulative)", "",
                      "| member | restarts | accuracy after it (%) | attacked | broken | seconds |",
                      "|---|---:|---:|---:|---:|---:|"]
            for name, m in members.items():
                lines.append(f"| {name} | {m.get('restarts', 1)} | {_pct(m['robust_accuracy'])} | {m['attacked']} | "
                             f"{m['broken']} | {m['seconds']} |")
    check = results.get("masking_check")
    if check:
        lines += ["", f"Masking check: {check['attack']} at eps = {check['epsilon']:g} leaves "
                      f"{_pct(check['robust_accuracy'])}% accuracy (should be ~0)."]
    warnings = results.get("warnings") or []
    lines += ["", "## Gradient-masking warnings", ""]
    lines += [f"- **warning**: {w}" for w in warnings] if warnings else ["None of the usual signs was seen."]
    sweep = results.get("sweep") or []
    if sweep:
        keys = _attack_keys(sweep[0]["robust_accuracy"]) + ["all"]
        lines += ["", "## Robust accuracy against eps", "", "| eps | natural | " + " | ".join(keys) + " |",
                  "|---:|---:|" + "---:|" * len(keys)]
        for entry in sweep:
            lines.append(f"| {entry['epsilon']:g} | {_pct(entry['natural_accuracy'])} | "
                         + " | ".join(_pct(entry["robust_accuracy"].get(k)) for k in keys) + " |")
    lines += ["", "## Per class", "", "| class | name | examples | natural (%) | robust (%) |",
              "|---:|---|---:|---:|---:|"]
    for e in results.get("per_class", []):
        lines.append(f"| {e['class']} | {e['name']} | {e['examples']} | {_pct(e['natural_accuracy'])} | "
                     f"{_pct(e['robust_accuracy'])} |")
    worst = results.get("worst_class")
    if worst:
        lines += ["", f"Worst class: {worst['class']} ({worst['name']}), {_pct(worst['robust_accuracy'])}% robust."]
    if images:
        lines += ["", "## Plots", ""] + [f"![{os.path.splitext(i)[0]}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_robust_vs_eps(results: dict, path: str) -> str:
    """Line plot of robust accuracy against eps, one line per attack (and ``all``), from ``sweep``."""
    sweep = results.get("sweep") or []
    if not sweep:
        raise ValueError("the results hold no sweep over eps (use evaluate_sweep / --epsilons)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    eps = [e["epsilon"] for e in sweep]
    for key in _attack_keys(sweep[0]["robust_accuracy"]) + ["all"]:
        style = dict(color="black", linewidth=3, alpha=0.45, zorder=1) if key == "all" else dict(linewidth=1.3)
        ax.plot(eps, [100 * e["robust_accuracy"][key] for e in sweep], marker="o", label=key, **style)
    ax.plot(eps, [100 * e["natural_accuracy"] for e in sweep], linestyle="--", color="gray", label="natural")
    ax.set_xlabel(f"eps ({results['norm']})")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{results.get('model') or 'model'} on {results.get('dataset') or 'data'}, "
                 f"{results['examples']} examples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_class(results: dict, path: str) -> str:
    """Bars of natural and robust accuracy per class at the results' eps."""
    import numpy as np

    plt = _pyplot()
    entries = [e for e in results["per_class"] if e["examples"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(entries) + 2), 4))
    pos = np.arange(len(entries))
    ax.bar(pos - 0.2, [100 * e["natural_accuracy"] for e in entries], 0.4, label="natural", color="#9ab")
    ax.bar(pos + 0.2, [100 * e["robust_accuracy"] for e in entries], 0.4, label="robust (all attacks)", color="#c44")
    ax.set_xticks(pos)
    ax.set_xticklabels([str(e["name"]) for e in entries], rotation=45 if len(entries) > 10 else 0, ha="right"
                       if len(entries) > 10 else "center", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"per-class accuracy, {results['norm']} eps={results['epsilon']:g}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 if len(entries) <= 10 else -0.3), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(results: dict, directory: str) -> dict[str, str]:
    """Writes ``results.json``, the plots and ``report.md`` into ``directory``; returns name -> path."""
    os.makedirs(directory, exist_ok=True)
    paths = {"results.json": os.path.join(directory, "results.json")}
    write_json_atomic(paths["results.json"], results)
    images = []
    if results.get("sweep") and len(results["sweep"]) > 1:
        paths["robust_vs_eps.png"] = plot_robust_vs_eps(results, os.path.join(directory, "robust_vs_eps.png"))
        images.append("robust_vs_eps.png")
    if any(e["examples"] for e in results.get("per_class", [])):
        paths["per_class.png"] = plot_per_class(results, os.path.join(directory, "per_class.png"))
        images.append("per_class.png")
    paths["report.md"] = os.path.join(directory, "report.md")
    write_text_atomic(paths["report.md"], markdown(results, images))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Markdown report and plots from an evaluation results.json")
    parser.add_argument("results", help="a results.json written by ardir_tf.evaluate")
    parser.add_argument("--report_dir", required=True, help="directory to write the report into")
    args = parser.parse_args(argv)
    try:
        with open(args.results) as f:
            results = json.load(f)
        results.setdefault("warnings", masking_warnings(results))
        paths = write_report(results, args.report_dir)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {', '.join(sorted(paths))} into {args.report_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
