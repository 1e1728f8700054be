"""Compare two capture.py npz files bitwise.

    python compare.py BEFORE.npz AFTER.npz

Prints one line per key: ``equal`` (np.array_equal, shapes and values, NaN == NaN
at the same places, dtype printed when it differs) or the max abs difference.
Exit code 1 if any key differs or is missing on either side.
"""

import sys

import numpy as np


def describe(a, b):
    """'equal' or a description of the difference."""
    if a.shape != b.shape:
        return f"DIFF shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        same = np.array_equal(a, b, equal_nan=True)
    else:
        same = np.array_equal(a, b)
    note = "" if a.dtype == b.dtype else f" (dtype {a.dtype} vs {b.dtype})"
    if same and not note:
        return "equal"
    if same:
        return "DIFF dtype only" + note
    if a.dtype.kind in "biufc" and b.dtype.kind in "biufc":
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        n_diff = int(np.sum(~((a == b) | (np.isnan(d) & np.isnan(a.astype(float))
                                              & np.isnan(b.astype(float))))))
        return (f"DIFF max abs {np.nanmax(d) if np.isfinite(d).any() else np.nan:.3e} "
                f"({n_diff}/{a.size} elements){note}")
    return "DIFF" + note


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    before, after = (np.load(p, allow_pickle=False) for p in argv)
    keys = sorted(set(before.files) | set(after.files))
    n_equal = n_diff = n_missing = 0
    width = max(map(len, keys))
    for k in keys:
        if k not in before.files or k not in after.files:
            side = "BEFORE" if k not in before.files else "AFTER"
            print(f"{k:{width}s}  MISSING in {side}")
            n_missing += 1
            continue
        res = describe(before[k], after[k])
        print(f"{k:{width}s}  {res}")
        if res == "equal":
            n_equal += 1
        else:
            n_diff += 1
    print(f"\nSUMMARY: {len(keys)} keys: {n_equal} equal, {n_diff} differ, "
          f"{n_missing} missing")
    return 1 if (n_diff or n_missing) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
