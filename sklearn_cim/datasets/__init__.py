"""Datasets with nuisances: coloured digits and MNIST, Waterbirds, CelebA.

Nothing is downloaded: :func:`make_colored_digits` builds on scikit-learn's
bundled digits, and the loaders read files from a directory you name.
"""

from ._celeba import load_celeba
from ._idx import load_colored_mnist, read_idx
from ._nuisance import PALETTE, add_nuisance, agreement_groups, make_colored_digits
from ._waterbirds import load_waterbirds

__all__ = [
    "PALETTE", "add_nuisance", "agreement_groups", "load_celeba", "load_colored_mnist",
    "load_waterbirds", "make_colored_digits", "read_idx",
]
