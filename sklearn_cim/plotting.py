"""Figures of a fitted CIM model: its masks and its training history.

Needs matplotlib: ``pip install "sklearn-cim[plot]"``.
"""

import numbers

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

__all__ = ["plot_masks", "plot_history"]

_SKIPPED_KEYS = ("epoch", "dur", "batches")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            'sklearn_cim.plotting needs matplotlib: pip install "sklearn-cim[plot]" '
            f"(or pip install matplotlib). ({exc})"
        ) from exc
    return plt


def _steps(estimator):
    if isinstance(estimator, Pipeline):
        return [(name, step) for name, step in estimator.steps
                if step is not None and step != "passthrough"]
    return [(None, estimator)]


def _masking_step(estimator, X):
    """The step with ``masks`` and X passed through the Pipeline steps before it."""
    for name, step in _steps(estimator):
        if hasattr(type(step), "masks"):
            check_is_fitted(step)
            return step, X
        if name is None:
            break
        X = step.transform(X)
    raise TypeError(
        f"plot_masks needs a fitted CIMTransformer (or a Pipeline holding one), got "
        f"{type(estimator).__name__}, which has no masks method."
    )


def _as_display(images, input_range):
    """(n, C, H, W) -> list of (H, W) or (H, W, 3) arrays in [0, 1] and a cmap."""
    low, high = input_range
    images = np.clip((images - low) / (high - low), 0, 1)
    if images.shape[1] == 3:
        return images.transpose(0, 2, 3, 1), None
    return images.mean(axis=1), "gray"


def plot_masks(transformer, X, n=8, *, axes=None):
    """Show images x, their masks m and psi(x) = m * x, one column per image.

    Parameters
    ----------
    transformer : CIMTransformer or Pipeline
        A fitted :class:`~sklearn_cim.CIMTransformer`, or a fitted Pipeline
        holding one (X is passed through the steps before it).
    X : array-like of shape (n_samples, C*H*W) or (n_samples, C, H, W)
        Images as the transformer (or Pipeline) accepts them.
    n : int, default=8
        Number of images shown: the first ``min(n, n_samples)``.
    axes : array of matplotlib Axes of shape (3, n) or None, default=None
        Where to draw (rows x, m, psi(x)); None makes a new figure.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Notes
    -----
    Images are drawn in the transformer's input units (``input_range_``)
    rescaled to [0, 1]; RGB images in colour, others as the grey mean of their
    channels. Masks are drawn on a fixed [0, 1] scale (white keeps), in colour
    when ``per_channel_mask=True`` gives RGB images three masks.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cim import CIMTransformer
    >>> from sklearn_cim.plotting import plot_masks
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(20, 3, 8, 8).astype(np.float32), np.repeat([0, 1], 10)
    >>> cim = CIMTransformer(distance="l2", max_epochs=1, batch_size=16,
    ...                      device="cpu", random_state=0).fit(X, y)
    >>> fig = plot_masks(cim, X, n=4)
    >>> len(fig.axes)
    12
    """
    plt = _pyplot()
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    step, X_step = _masking_step(transformer, X)
    X_step = X_step[:n]
    n = len(X_step)
    if n == 0:
        raise ValueError("X holds no images to plot.")
    shape = (n,) + tuple(step.image_shape_)
    images = np.asarray(X_step, dtype=np.float64).reshape(shape)
    masks = np.asarray(step.masks(X_step), dtype=np.float64).reshape(n, -1, *shape[2:])
    psi = np.asarray(step.transform(X_step), dtype=np.float64).reshape(shape)
    if axes is None:
        fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.4), squeeze=False)
    else:
        axes = np.asarray(axes, dtype=object).reshape(3, n)
        fig = axes[0, 0].figure
    rows = [("x", *_as_display(images, step.input_range_)),
            ("m", *_as_display(masks, (0.0, 1.0))),
            ("psi(x)", *_as_display(psi, step.input_range_))]
    for r, (label, pictures, cmap) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(pictures[c], cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label)
    return fig


def _history_step(estimator):
    steps = [(name, step) for name, step in _steps(estimator)
             if hasattr(type(step), "history_") or hasattr(step, "history_")]
    if not steps:
        raise TypeError(
            f"plot_history needs an estimator with a training history_ (CIMTransformer, "
            f"VIBClassifier or a Pipeline holding one), got {type(estimator).__name__}."
        )
    if len(steps) > 1:
        names = [name for name, _ in steps]
        raise ValueError(
            f"The Pipeline has several steps with a history_: {names}. Pass one, e.g. "
            f"plot_history(pipe.named_steps[{names[0]!r}])."
        )
    step = steps[0][1]
    check_is_fitted(step)
    return step


def plot_history(estimator, keys=None):
    """Plot each per-epoch loss term of a fitted estimator's ``history_``.

    Parameters
    ----------
    estimator : CIMTransformer, VIBClassifier or Pipeline
        A fitted estimator with ``history_``, or a fitted Pipeline with exactly
        one such step.
    keys : list of str or None, default=None
        History keys to plot, one axes each. None plots ``train_loss`` and the
        other per-epoch loss terms recorded (``train_ce``, ``train_triplet``,
        ``train_mask``, ``train_kl``, the gate ``train_mask_gate``, any
        ``valid_*``), without the ``*_best``
        flags and batch counts.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cim import CIMTransformer
    >>> from sklearn_cim.plotting import plot_history
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(20, 3, 8, 8).astype(np.float32), np.repeat([0, 1], 10)
    >>> cim = CIMTransformer(distance="l2", max_epochs=2, batch_size=16,
    ...                      device="cpu", random_state=0).fit(X, y)
    >>> fig = plot_history(cim)
    >>> [ax.get_title() for ax in fig.axes]
    ['train_loss', 'train_ce', 'train_triplet']
    """
    plt = _pyplot()
    history = _history_step(estimator).history_
    recorded = []
    for row in history:
        recorded += [k for k in row if k not in recorded]
    if keys is None:
        keys = [k for k in recorded if k.startswith(("train_", "valid_"))
                and not k.endswith(("_best", "_batch_count"))
                and isinstance(history[-1].get(k), numbers.Real)]
        keys.sort(key=lambda k: k != "train_loss")
        if not keys:
            raise ValueError(f"The history records no loss terms to plot: {recorded}.")
    else:
        keys = [keys] if isinstance(keys, str) else list(keys)
        unknown = [k for k in keys if k not in recorded or k in _SKIPPED_KEYS]
        if unknown or not keys:
            raise ValueError(f"Unknown history key(s) {unknown}; this history records "
                             f"{[k for k in recorded if k not in _SKIPPED_KEYS]}.")
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig
