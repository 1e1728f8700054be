"""scikit-learn's estimator checks on tiny CPU settings."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_cim import CIMTransformer, VIBClassifier

# The checks feed tabular data of any width and value range: each row is read
# as a 1-pixel-high grayscale strip (image_shape=(1, 1, -1)), floats are taken
# as they are (data_range=None), and the distance is "l2", which needs no range.
ESTIMATORS = [
    CIMTransformer(
        image_shape=(1, 1, -1), data_range=None, distance="l2", max_epochs=2,
        batch_size=16, tn_width=4, tn_depth=1, head_width=4, device="cpu",
        random_state=0,
    ),
    # Plain 2-D features into a small MLP encoder. Enough epochs at lr=1e-2 to
    # learn the blobs of check_classifiers_train (accuracy > 0.83) reliably.
    VIBClassifier(
        hidden_layer_sizes=(16,), latent_dim=8, n_test_samples=4, max_epochs=10,
        batch_size=32, lr=1e-2, device="cpu", random_state=0,
    ),
]

EXPECTED_FAILURES = {}


def expected_failed_checks(estimator):
    return EXPECTED_FAILURES.get(type(estimator).__name__, {})


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
