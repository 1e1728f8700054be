"""How far the removal check can be trusted: its estimates against the OOD
accuracy each CIM row really reached, and its warnings against the rows that
fell below their ERM.

Reads the JSON lines of ``run_nuisance_results.py`` and ``own_images_64px.py``
(the CIM rows carry ``removal_check`` and the ``removal_warnings`` their fit
gave) and prints:

* Spearman's rank correlation between the check's estimate and the OOD
  accuracy (the linear estimate ``balanced_accuracy`` for the LR rows, the CNN
  one ``balanced_accuracy_cnn`` for the CNN rows), over all rows, per
  downstream model and per split;
* the rows whose OOD accuracy is below their ERM's (ERM for LR rows, ERM CNN
  for CNN rows; same split and seed) that no warning concerning them flagged
  (misses), and the share of rows beating their ERM by 10 points or more that
  one did (false alarms). A warning that psi(x) is not estimated to help "a
  linear model" concerns the LR rows only, one about "a CNN" the CNN rows only;
  every other RemovalWarning concerns both;
* what the check cost: its seconds against the rest of the fit's.

    python benchmarks/check_validity.py benchmarks/results/A.jsonl B.jsonl
"""

import argparse
import json

import numpy as np


def split_of(row):
    if "dataset" in row:
        return f"{row['dataset']} {row['nuisance']}"
    return f"photos {row.get('side', 64)} px"


def concerns(message, model):
    if "not estimated to make a linear model" in message:
        return not model.endswith("CNN")
    if "not estimated to make a CNN" in message:
        return model.endswith("CNN")
    return True


def rows_of(lines):
    """The CIM rows with their estimate, OOD, ERM's OOD and whether they were flagged."""
    erm = {(split_of(r), r["seed"], r["model"]): r["ood"] for r in lines
           if r["model"] in ("ERM", "ERM CNN")}
    out = []
    for r in lines:
        check = r.get("removal_check")
        if not check or "balanced_accuracy_cnn" not in check:
            continue
        cnn = r["model"].endswith("CNN")
        base = erm.get((split_of(r), r["seed"], "ERM CNN" if cnn else "ERM"))
        out.append(dict(
            split=split_of(r), seed=r["seed"], model=r["model"], ood=r["ood"], erm=base,
            estimate=check["balanced_accuracy_cnn" if cnn else "balanced_accuracy"],
            estimate_x=check["balanced_accuracy_cnn_x" if cnn else "balanced_accuracy_x"],
            flagged=any(concerns(w, r["model"]) for w in r.get("removal_warnings", [])),
            seconds=check["seconds"], fit_s=r.get("cim_fit_s")))
    return out


def spearman(a, b):
    from scipy.stats import spearmanr
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def report(rows):
    print("| rows | n | Spearman (estimate vs OOD) |")
    print("|---|---|---|")
    groups = [("all", rows),
              ("LR rows", [r for r in rows if not r["model"].endswith("CNN")]),
              ("CNN rows", [r for r in rows if r["model"].endswith("CNN")])]
    groups += [(s, [r for r in rows if r["split"] == s])
               for s in dict.fromkeys(r["split"] for r in rows)]
    for name, rs in groups:
        rho = spearman([r["estimate"] for r in rs], [r["ood"] for r in rs])
        print(f"| {name} | {len(rs)} | {rho:.2f} |")
    below = [r for r in rows if r["erm"] is not None and r["ood"] < r["erm"]]
    missed = [r for r in below if not r["flagged"]]
    ahead = [r for r in rows if r["erm"] is not None and r["ood"] >= r["erm"] + 0.10]
    alarms = [r for r in ahead if r["flagged"]]
    print(f"\nrows below their ERM: {len(below)}, flagged {len(below) - len(missed)}, "
          f"missed {len(missed)}")
    for r in missed:
        print(f"  missed: {r['split']} seed {r['seed']} {r['model']}: OOD {r['ood']:.3f} < "
              f"ERM {r['erm']:.3f} (estimate {r['estimate']:.3f} vs {r['estimate_x']:.3f})")
    print(f"rows beating their ERM by 10 points or more: {len(ahead)}, flagged "
          f"{len(alarms)} ({len(alarms) / max(1, len(ahead)):.0%})")
    for r in alarms:
        print(f"  false alarm: {r['split']} seed {r['seed']} {r['model']}: OOD {r['ood']:.3f}"
              f" vs ERM {r['erm']:.3f} (estimate {r['estimate']:.3f} vs "
              f"{r['estimate_x']:.3f})")
    costs = [r["seconds"] / (r["fit_s"] - r["seconds"]) for r in rows if r["fit_s"]]
    if costs:
        print(f"\nthe check's time over the rest of the fit: median {np.median(costs):.0%}, "
              f"max {np.max(costs):.0%} ({len(costs)} rows, two per fit)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsonl", nargs="+")
    args = p.parse_args(argv)
    lines = [json.loads(line) for path in args.jsonl for line in open(path) if line.strip()]
    report(rows_of(lines))


if __name__ == "__main__":
    main()
