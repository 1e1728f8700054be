"""Wall time of one CIMTransformer fit: one process against fit_distributed.

In one run, on the same data and settings: ``fit`` in this process (torch's
default thread count), then ``sklearn_cim.distributed.fit_distributed`` with
``--nprocs`` processes (``gloo`` on CPU, each process given ``cpu_count //
nprocs`` threads; ``nccl`` with one process per GPU on CUDA). The distributed
wall time includes spawning the processes and importing torch in them. Also
printed: the last epoch's training loss of each (``batch_size`` is per process,
so the distributed fit takes ``nprocs`` times fewer steps per epoch).

    python benchmarks/bench_ddp.py --out results.jsonl
    python benchmarks/bench_ddp.py --device cuda --nprocs 4 --n 50000 --side 64
"""

import argparse
import os
import platform
import time

import numpy as np
import torch
from _jsonl import emit

from sklearn_cim import CIMTransformer
from sklearn_cim.distributed import fit_distributed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(args.n, 3, args.side, args.side), dtype=np.uint8)
    y = np.arange(args.n) % 10

    def make():
        return CIMTransformer(pretrained=False, max_epochs=args.epochs,
                              batch_size=args.batch_size, device=args.device,
                              random_state=0)

    emit(args.out, dict(what="header", machine=platform.machine(), cpus=os.cpu_count(),
                        torch=torch.__version__, threads=torch.get_num_threads(),
                        device=args.device, n=args.n, side=args.side, epochs=args.epochs,
                        batch_size_per_process=args.batch_size,
                        date=time.strftime("%Y-%m-%d")))

    make().set_params(max_epochs=1).fit(X[:256], y[:256])  # warm-up: LPIPS, kernels
    t0 = time.perf_counter()
    single = make().fit(X, y)
    single_s = time.perf_counter() - t0
    emit(args.out, dict(what="single", wall_s=round(single_s, 2),
                        last_train_loss=round(single.history_[-1, "train_loss"], 4),
                        steps_per_epoch=single.history_[-1, "train_batch_count"]))

    t0 = time.perf_counter()
    ddp = fit_distributed(make(), X, y, nprocs=args.nprocs)
    ddp_s = time.perf_counter() - t0
    emit(args.out, dict(what="distributed", nprocs=args.nprocs, wall_s=round(ddp_s, 2),
                        last_train_loss=round(ddp.history_[-1, "train_loss"], 4),
                        steps_per_epoch=ddp.history_[-1, "train_batch_count"],
                        single_over_distributed=round(single_s / ddp_s, 2)))


if __name__ == "__main__":
    main()
