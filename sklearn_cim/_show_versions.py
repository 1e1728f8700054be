"""``show_versions()``: the versions that matter when reporting a problem."""

import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def _version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions():
    """Return a dict of the versions of Python, torch, CUDA and the libraries."""
    import torch

    from ._version import __version__

    return {
        "sklearn_cim": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torchvision": _version("torchvision"),
        "lpips": _version("lpips"),
        "scikit-learn": _version("scikit-learn"),
        "skorch": _version("skorch"),
        "numpy": _version("numpy"),
        "joblib": _version("joblib"),
    }


def show_versions():
    """Print the versions of Python, torch, CUDA, lpips, scikit-learn and skorch.

    Examples
    --------
    >>> from sklearn_cim import show_versions
    >>> show_versions()  # doctest: +ELLIPSIS
    sklearn_cim: ...
    python: ...
    torch: ...
    """
    for key, value in versions().items():
        print(f"{key:>15}: {value}")
