"""The parameter tables: every parameter declared once, in scikit-learn's
``_parameter_constraints`` format, checked once per fit."""

import inspect

import numpy as np
import pytest

from sklearn_cim import CIMTransformer, VIBClassifier


def test_scikit_learns_private_validator_is_where_we_import_it_from():
    # sklearn_cim/_params.py imports these from a private scikit-learn module;
    # if scikit-learn moves them this fails first, naming the module to fix
    from sklearn.utils._param_validation import (  # noqa: F401
        Interval,
        InvalidParameterError,
        StrOptions,
        validate_parameter_constraints,
    )
    assert issubclass(InvalidParameterError, ValueError)
    assert issubclass(InvalidParameterError, TypeError)


@pytest.mark.parametrize("estimator", [CIMTransformer, VIBClassifier])
def test_every_parameter_is_declared_once_in_the_table(estimator):
    params = list(inspect.signature(estimator.__init__).parameters)[1:]
    assert sorted(estimator._parameter_constraints) == sorted(params)


@pytest.mark.parametrize("estimator, name, bad", [
    (CIMTransformer, "margin", -0.1), (CIMTransformer, "lr", 0.0),
    (CIMTransformer, "checkpoint", 3), (VIBClassifier, "latent_dim", 0),
])
def test_parameters_are_checked_once_at_fit(estimator, name, bad, monkeypatch):
    from sklearn.utils._param_validation import InvalidParameterError

    import sklearn_cim._estimator as est_module

    calls = []
    real = est_module.validate_params
    monkeypatch.setattr(est_module, "validate_params",
                        lambda e, *a: calls.append(e) or real(e, *a))
    X, y = np.random.RandomState(0).rand(8, 1, 8, 8).astype(np.float32), [0, 1] * 4
    small = dict(max_epochs=1, batch_size=4, device="cpu", random_state=0)
    if estimator is CIMTransformer:
        small.update(distance="l2", tn_width=2, head_width=2)
    else:
        small.update(hidden_layer_sizes=(4,), latent_dim=2, image_shape=(1, 8, 8))
    model = estimator(**small).fit(X, y)
    assert len(calls) == 1  # once per fit, not per epoch or step
    model.set_params(**{name: bad})
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of "):
        model.fit(X, y)
