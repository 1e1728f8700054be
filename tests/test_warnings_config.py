"""pyproject's filterwarnings: a deprecation warning attributed to sklearn_cim's
code (its call of a deprecated API) is an error in the test suite; the same
warning attributed to other code stays a warning."""

import warnings

import pytest


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning,
                                      FutureWarning])
@pytest.mark.parametrize("module", ["sklearn_cim", "sklearn_cim._devices",
                                    "sklearn_cim.datasets._nuisance"])
def test_deprecations_met_by_sklearn_cim_are_errors(category, module):
    with pytest.raises(category, match="deprecated"):
        warnings.warn_explicit("f() is deprecated", category, "f.py", 1, module=module,
                               registry={})


@pytest.mark.parametrize("module", ["sklearn.utils.validation", "tests.test_x"])
def test_deprecations_met_elsewhere_stay_warnings(module):
    with pytest.warns(FutureWarning, match="deprecated"):
        warnings.warn_explicit("f() is deprecated", FutureWarning, "f.py", 1, module=module,
                               registry={})
