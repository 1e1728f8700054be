"""Parameter tables: each estimator declares its parameters once, in
``_parameter_constraints`` (scikit-learn's format), and :func:`validate_params`
checks them once per ``fit`` / ``partial_fit``.

The constraint classes and the validator live in scikit-learn's private
``sklearn.utils._param_validation``; this is the one module that imports it,
and ``tests/test_params.py`` fails if it moves. The errors are scikit-learn's
``InvalidParameterError`` (a ``ValueError`` and a ``TypeError``), naming the
parameter, the estimator, what is allowed and the value given.
"""

import os
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)

__all__ = ["Interval", "StrOptions", "non_negative", "positive_int", "training_constraints",
           "validate_params"]


def non_negative():
    """A finite number >= 0 (a loss weight, a margin)."""
    return Interval(Real, 0, np.inf, closed="left")


def positive_int(low=1):
    """An integer >= ``low``."""
    return Interval(Integral, low, None, closed="left")


def training_constraints(min_batch_size=1):
    """The training parameters both estimators share."""
    return {
        "max_epochs": [positive_int()],
        "batch_size": [positive_int(min_batch_size)],
        "lr": [Interval(Real, 0, np.inf, closed="neither")],
        "device": [str],
        "distributed": ["boolean", StrOptions({"auto"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [list, None],
        "warm_start": ["boolean"],
        "checkpoint": [str, os.PathLike, None],
    }


def validate_params(estimator, names=None):
    """Check ``estimator``'s parameters (or those ``names``) against its
    ``_parameter_constraints``."""
    params = estimator.get_params(deep=False)
    if names is not None:
        params = {k: params[k] for k in names}
    validate_parameter_constraints(
        estimator._parameter_constraints, params, caller_name=type(estimator).__name__)
