"""Shared helpers of the image-folder loaders (Waterbirds, CelebA)."""

import numbers
import os

import numpy as np

SPLITS = {"train": 0, "val": 1, "test": 2}


def check_size(size):
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer (pixels per side), got {size!r}.")
    return int(size)


def check_splits(splits):
    """None -> None; an int, a name or a list of them -> sorted list of split codes."""
    if splits is None:
        return None
    if isinstance(splits, (str, numbers.Integral)):
        splits = [splits]
    codes = []
    for s in splits:
        code = SPLITS.get(s, s) if isinstance(s, str) else s
        if isinstance(code, bool) or code not in SPLITS.values():
            raise ValueError(
                f"Unknown split {s!r}: splits must be None (all) or a list of "
                f"0/'train', 1/'val', 2/'test'."
            )
        codes.append(int(code))
    return sorted(set(codes))


def read_images(root, filenames, size):
    """Load images as RGB, resized to size x size: uint8 array (n, 3, size, size)."""
    from PIL import Image  # torchvision depends on Pillow

    X = np.empty((len(filenames), 3, size, size), dtype=np.uint8)
    for i, name in enumerate(filenames):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Image {path!r} listed in the metadata does not exist. Check that "
                "root points at the extracted dataset."
            )
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            X[i] = np.asarray(img).transpose(2, 0, 1)
    return X
