"""The results grid: {make_colored_digits, MNIST} x {background, corner, mark}
x seeds, every model of ``nuisance_results.py``, one single-threaded process
per (dataset, nuisance, seed), ``--jobs`` at a time, JSON lines appended to
``--out`` as they come; then the tables (OOD and worst-group, a column per
split).

    python benchmarks/run_nuisance_results.py --mnist ../shared/data/mnist \\
        --out benchmarks/results/2026-12-06-cpu-nuisance-grid.jsonl

Settings (sized to finish in about 100 minutes on 2 CPU cores):
make_colored_digits at 16 px, as the demo (1,257 training images; load_digits is
8 x 8, so 16 px loses nothing); MNIST: ``MNIST_TRAIN`` training images of the
t10k file (28 px). Every CIM uses the estimator's defaults (``batch_size=32``:
the collapse case of the earlier recipe) but ``max_epochs`` (``EPOCHS``: about
1,200 optimizer steps on digits, 700 on MNIST) and ``pretrained=False``
(offline); the CNN baselines train ``CNN_EPOCHS`` epochs of
``nuisance_results.py``.
``--skip-done`` leaves out the (dataset, nuisance, seed) runs whose last line
is already in ``--out``.
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["ERM", "group-balanced LR", "JTT (LR)", "ERM CNN", "group-balanced CNN",
          "GroupDRO CNN", "group CIM -> LR", "inferred-group CIM -> LR", "group CIM -> CNN",
          "inferred-group CIM -> CNN", "oracle", "oracle CNN"]
#: The model a run writes last: its line marks the run as done.
LAST = "inferred-group CIM -> CNN"
NUISANCES = ("background", "corner", "mark")
#: Epochs of the group-aware CIMs, per dataset.
EPOCHS = {"digits": 30, "mnist": 15}
MNIST_TRAIN = 1500
DIGITS_SIZE = 16


def jobs(mnist, seeds, datasets):
    for seed in seeds:
        for dataset in datasets:
            for nuisance in NUISANCES:
                args = ["--nuisances", nuisance, "--seeds", str(seed), "--threads", "1",
                        "--epochs", str(EPOCHS[dataset]), "--models", *MODELS]
                if dataset == "mnist":
                    args += ["--mnist", mnist, "--n-train", str(MNIST_TRAIN)]
                else:
                    args += ["--image-size", str(DIGITS_SIZE)]
                yield (dataset, nuisance, seed), args


def done_runs(out):
    if not os.path.exists(out):
        return set()
    with open(out) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return {(r["dataset"], r["nuisance"], r["seed"]) for r in lines if r.get("model") == LAST}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist"],
                   choices=["digits", "mnist"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--skip-done", action="store_true")
    args = p.parse_args()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    script = os.path.join(HERE, "nuisance_results.py")
    skip = done_runs(args.out) if args.skip_done else set()

    def run(job):
        key, job_args = job
        cmd = [sys.executable, script, "--out", args.out, *job_args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        status = "ok" if done.returncode == 0 else f"FAILED\n{done.stderr[-2000:]}"
        print(*key, status, flush=True)

    todo = [job for job in jobs(args.mnist, args.seeds, args.datasets) if job[0] not in skip]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, todo))
    for metric in ("ood", "worst_group"):
        subprocess.run([sys.executable, script, "--summarise", args.out, "--wide", metric],
                       check=True)


if __name__ == "__main__":
    main()
