"""Draw the documentation's figures from the committed benchmark results.

Run by ``docs/conf.py`` at every build (matplotlib only, about a second), or
by hand::

    python docs/make_figures.py [OUT_DIR]

Writes ``ood_accuracy.png`` (default ``docs/_figures/``, git-ignored): OOD
accuracy per method on the six nuisance splits of the results grid, bars at the mean over seeds,
error bars at one standard deviation, one dot per seed. Each figure states the
machine, date and command that produced its data.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "2026-12-06-cpu-nuisance-grid.jsonl"
PROVENANCE = (
    "2 CPU cores (x86_64), 2026-12-06; seeds 0-4; LPIPS-alex with a random trunk.\n"
    "python benchmarks/run_nuisance_results.py --mnist ../shared/data/mnist\n"
    "    --out benchmarks/results/2026-12-06-cpu-nuisance-grid.jsonl"
)
SPLITS = [("digits", "background"), ("digits", "corner"), ("digits", "mark"),
          ("mnist", "background"), ("mnist", "corner"), ("mnist", "mark")]
PANELS = [
    ("a logistic regression on the pixels or on psi(x)",
     ["ERM", "group-balanced LR", "JTT (LR)", "group CIM -> LR",
      "inferred-group CIM -> LR", "oracle"]),
    ("a CNN (the CIM head's architecture) on the pixels or on psi(x)",
     ["ERM CNN", "group-balanced CNN", "GroupDRO CNN", "group CIM -> CNN", "oracle CNN"]),
]
NAMES = {"mnist": "MNIST", "digits": "digits"}
# The file's model names and the names the Results page uses.
LABELS = {"JTT (LR)": "JTT (LR, no groups)",
          "group-balanced LR": "group-balanced LR (true groups)",
          "group CIM -> LR": "group CIM -> LR (true groups)",
          "inferred-group CIM -> LR": "inferred-group CIM -> LR (no groups)",
          "oracle": "oracle (LR, no nuisance)", "ERM": "ERM (LR on pixels)",
          "group-balanced CNN": "group-balanced CNN (true groups)",
          "GroupDRO CNN": "GroupDRO CNN (true groups)",
          "group CIM -> CNN": "group CIM -> CNN (true groups)",
          "oracle CNN": "oracle CNN (no nuisance)"}


def load(path=RESULTS):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ood(rows, model, dataset, nuisance):
    """OOD accuracy of ``model`` on one split, one value per seed, in seed order."""
    found = {r["seed"]: r["ood"] for r in rows if "ood" in r and r["model"] == model
             and r.get("dataset") == dataset and r["nuisance"] == nuisance}
    return np.array([found[s] for s in sorted(found)])


def ood_figure(rows):
    fig, axes = plt.subplots(2, 1, figsize=(9, 9.5))
    x = np.arange(len(SPLITS))
    for ax, (title, models) in zip(axes, PANELS):
        width = 0.84 / len(models)
        for i, model in enumerate(models):
            pos = x - 0.42 + (i + 0.5) * width
            values = [ood(rows, model, *split) for split in SPLITS]
            have = [len(v) > 0 for v in values]
            means = np.array([v.mean() if len(v) else np.nan for v in values])
            stds = np.array([v.std() if len(v) else np.nan for v in values])
            colour = f"C{i}"
            ax.bar(pos[have], means[have], width * 0.92, yerr=stds[have], capsize=2,
                   color=colour, alpha=0.75, label=LABELS.get(model, model))
            for p, v in zip(pos, values):
                ax.plot(np.full(len(v), p), v, "o", ms=2.5, color="black", alpha=0.7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("OOD accuracy")
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3,
                  frameon=False)
        ax.set_xticks(x, [f"{NAMES[d]}\n{n}" for d, n in SPLITS])
    seeds = len({r["seed"] for r in rows if "ood" in r})
    fig.suptitle(f"OOD accuracy: mean over {seeds} seeds (bars), one standard deviation\n"
                 "(error bars), each seed (dots)", fontsize=11)
    fig.text(0.01, 0.005, PROVENANCE, fontsize=7, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "_figures"
    out.mkdir(parents=True, exist_ok=True)
    fig = ood_figure(load())
    fig.savefig(out / "ood_accuracy.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out / 'ood_accuracy.png'}")


if __name__ == "__main__":
    main()
