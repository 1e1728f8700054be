"""
CIM against a coloured-background nuisance (now the demo)
=========================================================

Kept so that existing commands keep working: this script runs
``python -m sklearn_cim demo`` (:mod:`sklearn_cim.demo`) with the options it is
given, e.g. ``--seed``, ``--epochs``, ``--quick``. What its old options did is
now in

* ``--mnist DIR``: ``examples/plot_nuisance_background_mnist.py --root DIR``;
* ``--grid``: ``examples/plot_grid_search_worst_group.py``.

``load_digits_32`` and ``colourise`` stay for ``benchmarks/device_check.py``.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from sklearn_cim.datasets import add_nuisance
from sklearn_cim.demo import main as demo_main

MOVED = {"--mnist": "examples/plot_nuisance_background_mnist.py --root DIR",
         "--grid": "examples/plot_grid_search_worst_group.py"}


def load_digits_32():
    """Grey ``load_digits`` images upsampled to 32 px, in [0, 1], and their labels."""
    digits = load_digits()
    X = torch.from_numpy(digits.images.astype(np.float32) / 16)[:, None]
    X = F.interpolate(X, size=(32, 32), mode="bilinear", align_corners=False)
    return X[:, 0].clamp(0, 1).numpy(), digits.target


def colourise(grey, y, p_agree, rng, oracle=False):
    """White digit on a background whose colour agrees with y w.p. p_agree, else random."""
    return add_nuisance(grey, y, nuisance="none" if oracle else "background",
                        p_agree=p_agree, shift="random", random_state=rng)[0]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    for option, replacement in MOVED.items():
        if any(a == option or a.startswith(option + "=") for a in argv):
            sys.exit(f"colored_background.py: {option} has moved to {replacement}")
    return demo_main(argv)


if __name__ == "__main__":
    main()
