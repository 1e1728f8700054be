"""Throughput of CIMTransformer.fit / transform against a plain training loop.

Everything is measured in one run, on one device, and printed as JSON lines:

* ``fit``: samples/s of ``CIMTransformer.fit`` (epochs * n / seconds, after a
  warm-up fit), uint8 images held on the device, default networks;
* ``plain``: the same step written the plain way with the same networks: fp32,
  a ``torch.utils.data.DataLoader`` over a ``TensorDataset``, random
  same-class / other-class partners from the batch and LPIPS called twice,
  ``lpips(psi, p)`` and ``lpips(psi, q)`` (four trunk passes per sample);
* ``ratio`` = fit / plain, and ``transform`` samples/s with its ratio to fit;
* ``other_*``: the fit again with the other precision than the device's
  default (bf16 on CPU, float32 on CUDA);
* peak memory of each phase: ``torch.cuda.max_memory_allocated`` on CUDA,
  the rise of the process's resident set size (sampled every 5 ms) on CPU;
* ``memory``: bytes the fit needs per byte of uint8 input: the slope of the
  peak between two data sizes (24 MB and 768 MB), each in a fresh process over
  the first 20 steps of a fit;
* ``pickle``: the size of the default fitted model, with and without the
  optimizer state.

The LPIPS trunk is random (``pretrained=False``): the cost is the same as the
ImageNet trunk's, and it needs no download.

    python benchmarks/bench_fit.py                      # CPU: 32 and 64 px, batch 64
    python benchmarks/bench_fit.py --out results.jsonl  # also write the lines to a file
    python benchmarks/bench_fit.py --sizes 32 64 128 224 --batch-size 256   # on a GPU
"""

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from _jsonl import emit
from skorch.callbacks import Callback

from sklearn_cim import CIMTransformer
from sklearn_cim._distances import load_lpips
from sklearn_cim._networks import ConvClassifier, MaskNet

N_CLASSES = 10


def make_data(n, side, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % N_CLASSES
    X = rng.randint(0, 256, size=(n, 3, side, side), dtype=np.uint8)
    return X, y


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or RSS rise on CPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        self.mb = (self.peak - self.base) / 2 ** 20


def cuda_device(device):
    return torch.device(device).type == "cuda"


def sync(device):
    if cuda_device(device):
        torch.cuda.synchronize()


def plain_fit(X, y, *, epochs, batch_size, device, margin=0.1, lr=1e-3):
    """The straightforward loop: fp32 DataLoader, LPIPS called per pair."""
    torch.manual_seed(0)
    mask_net = MaskNet(3, 16, 2).to(device)
    head = ConvClassifier(3, N_CLASSES, 32).to(device)
    lp = load_lpips("alex", pretrained=False).to(device)
    opt = torch.optim.Adam(list(mask_net.parameters()) + list(head.parameters()), lr=lr)
    data = torch.utils.data.TensorDataset(torch.from_numpy(X).float() / 255,
                                          torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         drop_last=False)
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            psi = mask_net(xb) * xb
            same = yb[:, None] == yb[None, :]
            eye = torch.eye(len(yb), dtype=torch.bool, device=device)
            scores = torch.rand(same.shape, device=device)
            pos = torch.where(same & ~eye, scores, -1.0).argmax(1)
            neg = torch.where(~same, scores, -1.0).argmax(1)
            d_pos = lp(psi, xb[pos], normalize=True).flatten()
            d_neg = lp(psi, xb[neg], normalize=True).flatten()
            loss = F.cross_entropy(head(psi), yb) + F.relu(d_pos - d_neg + margin).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the per-step read a plain loop does to log its loss


def cim(device, epochs, batch_size, **extra):
    return CIMTransformer(pretrained=False, max_epochs=epochs, batch_size=batch_size,
                          device=device, random_state=0, **extra)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    with PeakMemory(device) as mem:
        out = fn()
        sync(device)
    return time.perf_counter() - start, mem.mb, out


def bench_size(side, *, n, epochs, batch_size, device):
    X, y = make_data(n, side)
    flat = X.reshape(n, -1)
    warm = min(n, 4 * batch_size)
    # warm-up: LPIPS construction, kernels, autotuning
    cim(device, 1, batch_size).fit(flat[:warm], y[:warm])
    plain_fit(X[:warm], y[:warm], epochs=1, batch_size=batch_size, device=device)

    fit_s, fit_mb, model = timed(lambda: cim(device, epochs, batch_size).fit(flat, y), device)
    plain_s, plain_mb, _ = timed(
        lambda: plain_fit(X, y, epochs=epochs, batch_size=batch_size, device=device), device)
    model.transform(flat[:warm])
    reps = 3
    tr_s, tr_mb, _ = timed(lambda: [model.transform(flat) for _ in range(reps)], device)
    fit_rate, plain_rate = epochs * n / fit_s, epochs * n / plain_s
    tr_rate = reps * n / tr_s
    other = "float32" if model.net_.precision == "bfloat16" else "bfloat16"
    other_s, _, _ = timed(
        lambda: cim(device, epochs, batch_size, precision=other).fit(flat, y), device)
    other_rate = epochs * n / other_s
    return dict(
        what="throughput", side=side, n=n, epochs=epochs, batch_size=batch_size,
        precision=model.net_.precision, channels_last=model.net_.channels_last,
        fit_samples_per_s=round(fit_rate, 1), plain_samples_per_s=round(plain_rate, 1),
        fit_over_plain=round(fit_rate / plain_rate, 2),
        other_precision=other, other_fit_samples_per_s=round(other_rate, 1),
        other_fit_over_plain=round(other_rate / plain_rate, 2),
        transform_samples_per_s=round(tr_rate, 1),
        transform_over_fit=round(tr_rate / fit_rate, 1),
        fit_peak_mb=round(fit_mb, 1), plain_peak_mb=round(plain_mb, 1),
        transform_peak_mb=round(tr_mb, 1),
    )


class StopAfter(Callback):
    """Stop a fit after some batches, as Ctrl-C would (fit keeps the weights)."""

    def __init__(self, batches):
        self.batches = batches

    def on_batch_end(self, net, **kwargs):
        if len(net.history[-1]["batches"]) >= self.batches:
            raise KeyboardInterrupt


def memory_child(n, side, batch_size, device):
    """(peak MB of the first 20 steps of a fit on n uint8 images, their raw MB)."""
    X, y = make_data(n, side)
    flat = X.reshape(n, -1)
    with PeakMemory(device) as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "training was interrupted"
        cim(device, 1, batch_size, callbacks=[StopAfter(20)]).fit(flat, y)
    return mem.mb, flat.nbytes / 2 ** 20


def bench_memory(side, sizes, batch_size, device):
    peaks = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n), str(side), str(batch_size),
             "--device", device], capture_output=True, text=True, check=True)
        peaks.append(json.loads(out.stdout.strip().splitlines()[-1]))
    (p1, r1), (p2, r2) = peaks
    extra = (p2 - p1) / (r2 - r1)  # what fit adds per byte of input, on top of X itself
    return dict(what="memory", side=side, n=list(sizes), raw_mb=[round(r1, 1), round(r2, 1)],
                fit_peak_rise_mb=[round(p1, 1), round(p2, 1)],
                fit_extra_bytes_per_input_byte=round(extra, 3),
                # on CPU the input itself plus the extra; on CUDA the device copy
                input_cost_over_raw=round(extra if cuda_device(device) else 1 + extra, 3))


def bench_pickle(device):
    X, y = make_data(256, 32)
    model = cim(device, 1, 64).fit(X.reshape(256, -1), y)
    # pickles keep the optimizer state since 0.2 (keep_optimizer_state was removed)
    return dict(what="pickle", model="CIMTransformer() defaults, 32 px RGB, 10 classes",
                pickle_with_optimizer_mb=round(len(pickle.dumps(model)) / 2 ** 20, 2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="images per size")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", help="append the JSON lines to this file too")
    parser.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child, args.device)))
        return
    cuda = torch.device(args.device).type == "cuda"
    sizes = args.sizes or ([32, 64, 128, 224] if cuda else [32, 64])
    batch_size = args.batch_size or (256 if cuda else 64)
    header = dict(
        what="device", device=(torch.cuda.get_device_name() if cuda else platform.processor()
                               or platform.machine()),
        torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(),
        date=time.strftime("%Y-%m-%d"))
    emit(args.out, header)

    for side in sizes:
        if cuda:
            n = args.n or max(batch_size * 8, (2 ** 24) // (side * side))
            epochs = args.epochs or 3
        else:
            n = args.n or (1024 if side <= 32 else 384)
            epochs = args.epochs or 2
        emit(args.out, bench_size(side, n=n, epochs=epochs, batch_size=batch_size,
                                  device=args.device))
    mem_n = (2048, 65536)  # 24 MB and 768 MB of 64 px RGB uint8
    emit(args.out, bench_memory(64, mem_n, batch_size, args.device))
    emit(args.out, bench_pickle(args.device))


if __name__ == "__main__":
    main()
