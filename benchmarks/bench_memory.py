"""What CIMTransformer.fit costs in host memory per byte of training input.

For each kind of input (a uint8 array in memory, a uint8 ``np.memmap`` opened
read-only, a float64 array in memory) and two data sizes, a fresh process
builds the input, then fits for 20 steps (batch 64, 64 px RGB, CPU) while a
thread samples the process's anonymous resident memory (``RssAnon``: memory
the process owns; a memmap's pages are file cache, shared and reclaimable,
and are not counted) every 5 ms. The slope of the peak rise between the two
sizes is what ``fit`` adds per byte of input, beyond the input itself; a
whole converted copy would show as 4 (uint8 -> float32) or 0.5 (float64 ->
float32).

    python benchmarks/bench_memory.py --out results.jsonl
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import torch
from _jsonl import emit
from skorch.callbacks import Callback

SIDE = 64
BATCH = 64
STEPS = 20


def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakAnon:
    def __enter__(self):
        self.base = self.peak = rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mb = (self.peak - self.base) / 2 ** 20


class StopAfter(Callback):
    def on_batch_end(self, net, **kwargs):
        if len(net.history[-1]["batches"]) >= STEPS:
            raise KeyboardInterrupt


def make_input(kind, n, tmpdir):
    rng = np.random.RandomState(0)
    shape = (n, 3 * SIDE * SIDE)
    if kind == "memmap-uint8":
        path = os.path.join(tmpdir, f"x{n}.u8")
        mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
        for start in range(0, n, 4096):  # written in slices: no whole copy in memory
            stop = min(n, start + 4096)
            mm[start:stop] = rng.randint(0, 256, size=(stop - start, shape[1]), dtype=np.uint8)
        mm.flush()
        del mm
        return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    X = rng.randint(0, 256, size=shape, dtype=np.uint8)
    return X if kind == "array-uint8" else X / 255.0


def child(kind, n):
    from sklearn_cim import CIMTransformer

    y = np.arange(n) % 10
    with tempfile.TemporaryDirectory() as tmpdir:
        X = make_input(kind, n, tmpdir)
        cim = CIMTransformer(distance="lpips-alex", pretrained=False, batch_size=BATCH,
                             max_epochs=1, device="cpu", random_state=0,
                             callbacks=[StopAfter()])
        # build LPIPS and warm the allocator on a few rows: not the input's cost
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "training was interrupted"
            cim.fit(X[:BATCH * 2], y[:BATCH * 2])
            with PeakAnon() as mem:
                cim.fit(X, y)
        return dict(peak_rise_mb=mem.mb, input_mb=X.nbytes / 2 ** 20)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[2048, 16384],
                        help="two numbers of 64 px RGB images")
    parser.add_argument("--kinds", nargs="+",
                        default=["array-uint8", "memmap-uint8", "array-float64"])
    parser.add_argument("--out")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    emit(args.out, dict(what="header", machine=platform.machine(), cpus=os.cpu_count(),
                        torch=torch.__version__, side=SIDE, batch_size=BATCH, steps=STEPS,
                        date=time.strftime("%Y-%m-%d")))
    for kind in args.kinds:
        runs = []
        for n in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        (a, b) = runs
        slope = (b["peak_rise_mb"] - a["peak_rise_mb"]) / (b["input_mb"] - a["input_mb"])
        emit(args.out, dict(what="memory", kind=kind, n=args.sizes,
                            input_mb=[round(r["input_mb"], 1) for r in runs],
                            fit_peak_rise_mb=[round(r["peak_rise_mb"], 1) for r in runs],
                            fit_extra_bytes_per_input_byte=round(slope, 3)))


if __name__ == "__main__":
    main()
