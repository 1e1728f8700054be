"""VIBClassifier: the deep variational information bottleneck as a classifier."""

import copy
from numbers import Integral

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils import TransformerTags
from sklearn.utils.validation import check_is_fitted

from ._batching import batched_apply
from ._estimator import TorchEstimatorMixin
from ._net import TorchNet
from ._networks import VIBModule, gaussian_kl
from ._params import non_negative, positive_int, training_constraints, validate_params
from ._validation import (
    encode_labels,
    require_y,
    validate_data_with_fix,
    validate_images,
)

# VIBModule was defined here until it joined the other networks; pickles written
# then name it ``sklearn_cim._vib.VIBModule``, which the import above keeps
# resolving (tests/test_old_pickles.py).

# Activation budget (elements) of one inference chunk.
_INFER_BUDGET = 2 ** 24
# Offset of the test-time generator (TorchNet uses 0 for batches, 1 for loss).
_PREDICT_STREAM = 2
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class VIBNet(TorchNet):
    """skorch net training :class:`VIBModule` on ``CE + beta * KL``.

    Each step draws ``n_train_samples`` reparameterised codes
    ``z = mu + sigma * eps`` per sample, with ``eps`` from the net's seeded
    :attr:`generator`; the CE is averaged over the draws.
    """

    def __init__(self, *args, beta=1e-3, n_train_samples=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.n_train_samples = n_train_samples

    def loss_terms(self, y_pred, targets, X):
        mu, sigma = y_pred
        y_true = targets.classes
        logits = self.module_.sample_logits(mu, sigma, self.generator, self.n_train_samples)
        ce = self.criterion_(logits.flatten(0, 1), y_true.repeat(self.n_train_samples))
        return {"ce": (1.0, ce), "kl": (self.beta, gaussian_kl(mu, sigma))}


class VIBClassifier(ClassNamePrefixFeaturesOutMixin, ClassifierMixin, TransformerMixin,
                    TorchEstimatorMixin, BaseEstimator):
    """Deep variational information bottleneck classifier (Alemi et al., 2017).

    A stochastic encoder maps ``x`` to ``p(z|x) = N(mu(x), diag sigma(x)^2)``
    with ``sigma = softplus(raw - 5)``; a linear decoder gives ``q(y|z)``.
    ``fit`` minimises, with reparameterised draws ``z = mu + sigma * eps``::

        CE(q(y|z), y) + beta * KL(p(z|x) || N(0, I))

    where the KL is analytic (summed over latent dimensions, averaged over the
    batch). The CE is the distortion, the KL the rate: larger ``beta``
    compresses more (lower KL) at some cost in fit. ``predict_proba`` averages
    the softmax over ``n_test_samples`` draws; ``transform`` returns ``mu(x)``
    so the estimator can serve as a learnt embedding (its columns are named
    ``vibclassifier0``, ... by ``get_feature_names_out``, and ``set_output``
    applies to it).

    Features are used as they are (no range is assumed): any finite 2-D float
    features work; scale them as for any neural net (e.g. ``StandardScaler``,
    or ``X / 16`` for ``load_digits``).

    Parameters
    ----------
    beta : float, default=1e-3
        Weight of the KL (rate) term; ``>= 0``. 0 gives a plain stochastic
        network with no bottleneck pressure.
    latent_dim : int, default=256
        Dimension K of the code z.
    hidden_layer_sizes : tuple of int, default=(1024, 1024)
        Widths of the fully connected ReLU layers of the encoder (after the
        conv stages when ``image_shape`` is given). ``()`` makes ``mu`` and
        ``sigma`` linear in the input features.
    image_shape : tuple of int or None, default=None
        None: X holds plain feature vectors, encoded by an MLP. ``(C, H, W)``
        (or ``(H, W)``; one entry may be -1): each row is an image, encoded by
        two conv stages (:class:`~sklearn_cim._networks.ConvEncoder`) followed
        by ``hidden_layer_sizes``; X may then also be 4-D
        ``(n_samples, C, H, W)``. Values are taken as they are (scale uint8
        images to [0, 1] yourself).
    conv_width : int, default=32
        Channels of the first conv stage (only with ``image_shape``).
    n_train_samples : int, default=1
        Draws of z per sample and training step.
    n_test_samples : int, default=12
        Draws of z averaged by ``predict_proba``. The same ``n_test_samples``
        noise vectors, drawn from a generator seeded by the fitted seed, are
        used for every row, so each row's probabilities depend only on that
        row: repeated calls, subsets and reorderings of X agree.
    max_epochs : int, default=30
    batch_size : int, default=100
    lr : float, default=1e-3
        Adam learning rate.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``.
    distributed : {False, True, "auto"}, default=False
        Data-parallel training with the other processes of an initialised
        ``torch.distributed`` process group, each calling ``fit`` on the same
        data (see :mod:`sklearn_cim.distributed`). ``True``: the group must
        exist; ``"auto"``: when a group of more than one process exists;
        ``False``: always train alone. ``batch_size`` is then per process.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, batch order, training noise and the test-time
        draws. torch's global random state is left unchanged.
    verbose : int, default=0
        0 silent; 1 one progress bar for the whole fit (batches of every
        epoch, rate, ETA and the last epoch's loss terms); 2 skorch's table of
        one line per epoch and a bar per epoch.
    callbacks : list of skorch callbacks or None, default=None
    checkpoint : str, path-like or None, default=None
        A folder: ``fit`` writes the model's state there at the end of every
        epoch (weights, optimizer state, history), and a ``fit`` of the same
        estimator on the same data that was killed (pre-emption, out of
        memory, ``kill -9``) resumes from the last one: run it again and the
        fitted model equals the one an uninterrupted fit reaches, bitwise on
        CPU. Each fit has its own sub-folder, named by a fingerprint of the
        parameters and the training data (read once more to hash it), so one
        folder serves a whole search. A finished fit's last checkpoint stays:
        running the same fit again returns it without training; delete the
        folder to train anew. Not with ``warm_start`` continuations or
        ``partial_fit``.
    warm_start : bool, default=False
        If True, ``fit`` on a fitted classifier continues training from its
        weights (same features; labels among ``classes_``).

    Attributes
    ----------
    net_ : VIBNet
        The fitted skorch net; ``net_.module_`` is the :class:`VIBModule`.
    classes_ : ndarray of shape (n_classes,)
        Class labels; columns of ``predict_proba`` follow this order.
    image_shape_ : tuple of int or None
        ``(C, H, W)`` with ``image_shape``, else None.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X had string column names.
    device_ : str
        Device the model lives on.
    history_ : skorch History
        Per epoch: ``train_loss`` (``ce + beta * kl``), ``train_ce``
        (distortion) and ``train_kl`` (rate, in nats), epoch means.

    Notes
    -----
    Test-time draws use common random numbers: one set of ``n_test_samples``
    noise vectors per call, shared by all rows. ``predict_proba`` is thus a
    fixed function of each row (for a fitted model), as scikit-learn expects:
    it does not change between calls, with the batch a row comes in, or with
    the row order. On CPU, inference also runs in float64 (on a copy of the
    float32 weights) so that results do not depend on the batch size through
    rounding; on CUDA it runs in float32.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn_cim import VIBClassifier
    >>> X, y = make_blobs(n_samples=200, centers=3, random_state=0)
    >>> clf = VIBClassifier(hidden_layer_sizes=(32,), latent_dim=4, max_epochs=20,
    ...                     batch_size=32, lr=1e-2, device="cpu",
    ...                     random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 3)
    >>> clf.transform(X).shape
    (200, 4)
    >>> len(clf.history_[:, "train_kl"])
    20
    """

    _pixels = False  # features, not 8-bit pixels: integers are kept as values

    _parameter_constraints = {
        "beta": [non_negative()],
        "latent_dim": [positive_int()],
        "hidden_layer_sizes": [positive_int(), tuple, list],
        "image_shape": [tuple, list, None],
        "conv_width": [positive_int()],
        "n_train_samples": [positive_int()],
        "n_test_samples": [positive_int()],
        **training_constraints(),
    }
    _saved_tuple_attributes = ("image_shape_",)

    def __init__(
        self,
        *,
        beta=1e-3,
        latent_dim=256,
        hidden_layer_sizes=(1024, 1024),
        image_shape=None,
        conv_width=32,
        n_train_samples=1,
        n_test_samples=12,
        max_epochs=30,
        batch_size=100,
        lr=1e-3,
        device="auto",
        distributed=False,
        random_state=None,
        verbose=0,
        callbacks=None,
        warm_start=False,
        checkpoint=None,
    ):
        self.beta = beta
        self.latent_dim = latent_dim
        self.hidden_layer_sizes = hidden_layer_sizes
        self.image_shape = image_shape
        self.conv_width = conv_width
        self.n_train_samples = n_train_samples
        self.n_test_samples = n_test_samples
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.distributed = distributed
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.warm_start = warm_start
        self.checkpoint = checkpoint

    # -- public API -----------------------------------------------------------
    def fit(self, X, y):
        """Train the encoder and decoder on labelled features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numeric features; with ``image_shape`` also
            ``(n_samples, C, H, W)``.
        y : array-like of shape (n_samples,)
            Class labels (any type scikit-learn accepts, strings included).

        Returns
        -------
        self : VIBClassifier
        """
        return self._fit_features(X, y, warm=self._continues())

    def partial_fit(self, X, y, classes=None):
        """Train one epoch on (X, y), continuing from the current weights.

        Parameters
        ----------
        X, y : as in :meth:`fit`
        classes : array-like or None
            All labels, needed on the first call when y does not hold them all.

        Returns
        -------
        self : VIBClassifier
        """
        return self._fit_features(X, y, warm=hasattr(self, "net_"), epochs=1,
                                  classes=classes)

    def predict_proba(self, X):
        """Class probabilities, the softmax averaged over ``n_test_samples`` draws.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), float64
            Columns follow ``classes_``; rows sum to 1.
        """
        check_is_fitted(self)
        X, _ = self._validate(X, reset=False)
        # read here, not in fit: checked where it is read, from the same table
        validate_params(self, ["n_test_samples"])
        module, dtype = self._inference_module()
        eps = torch.randn(
            (self.n_test_samples, 1, self.net_.module__latent_dim),
            # A CPU generator: the same draws whichever device the model is on.
            generator=torch.Generator().manual_seed(self.net_.seed + _PREDICT_STREAM),
        ).to(device=self.device_, dtype=dtype)

        def proba(xb):
            mu, sigma = module(xb.to(dtype))
            logits = module.decode(mu.unsqueeze(0) + sigma.unsqueeze(0) * eps)
            return torch.softmax(logits, dim=-1).mean(0)

        out = self._batched(proba, X, len(self.classes_)).astype(np.float64)
        return out / out.sum(axis=1, keepdims=True)

    def fit_transform(self, X, y=None):
        """Fit, then return the latent means mu(X) (see :meth:`transform`).

        ``y`` is required, as in :meth:`fit`: a ``ValueError`` says so without it.
        """
        require_y(self, y, "fit_transform")
        return self.fit(X, y).transform(X)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Most probable class under :meth:`predict_proba`.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def transform(self, X):
        """Return the latent means mu(x), a deterministic embedding.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        mu : ndarray of shape (n_samples, latent_dim)
            float32, or float64 when X is float64.
        """
        check_is_fitted(self)
        X, _ = self._validate(X, reset=False)
        module, dtype = self._inference_module()
        out = self._batched(lambda xb: module(xb.to(dtype))[0], X,
                            self.net_.module__latent_dim)
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float32
        return out.astype(dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        # transform() embeds X as mu(x), so the transformer checks apply too
        # (fit_transform, get_feature_names_out and set_output are defined).
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64", "float32"])
        return tags

    @property
    def _n_features_out(self):
        # Columns of transform: the latent means (get_feature_names_out names them).
        return self.net_.module__latent_dim

    # -- internals ------------------------------------------------------------
    def _check_param_combinations(self):
        self._hidden_layer_sizes()

    def _hidden_layer_sizes(self):
        """``hidden_layer_sizes`` as a tuple of positive ints (an int is one layer)."""
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, Integral) and not isinstance(hidden, bool):
            hidden = (hidden,)
        if not all(isinstance(h, Integral) and not isinstance(h, bool) and h >= 1
                   for h in hidden):
            raise ValueError(
                f"hidden_layer_sizes must be a tuple of positive integers, got "
                f"{self.hidden_layer_sizes!r}; write e.g. hidden_layer_sizes=(256, 256) "
                "or () for no hidden layer."
            )
        return tuple(int(h) for h in hidden)

    def _validate(self, X, y=None, *, reset):
        """Validate X (and y in fit); returns ``(X2d, y)``."""
        plain = self.image_shape is None if reset else self.image_shape_ is None
        if plain:
            kwargs = dict(dtype=(np.float64, np.float32), ensure_all_finite=True)
            if reset:
                X, y = validate_data_with_fix(self, X, y, **kwargs)
                self.image_shape_ = None
            else:
                X = validate_data_with_fix(self, X, reset=False, **kwargs)
        else:
            if reset and y is None:
                raise ValueError(
                    f"{type(self).__name__} requires y to be passed, but the "
                    "target y is None."
                )
            X, y, shape, _ = validate_images(
                self, X, y, image_shape=self.image_shape, reset=reset)
            if reset:
                self.image_shape_ = tuple(int(s) for s in shape)
        if X.size and X.dtype == np.float64 and max(X.max(), -X.min()) > _FLOAT32_MAX:
            raise ValueError(
                "X holds values too large for float32, the precision the network "
                "computes in; scale the features, e.g. with StandardScaler."
            )
        return X, y

    def _in_shape(self):
        if self.image_shape_ is not None:
            return self.image_shape_
        return (self.n_features_in_,)

    def _fit_features(self, X, y, *, warm, epochs=None, classes=None):
        with self._all_or_nothing():
            return self._fit_checked(X, y, warm=warm, epochs=epochs, classes=classes)

    def _fit_checked(self, X, y, *, warm, epochs, classes):
        self._check_params()
        X, y = self._validate(X, y, reset=not warm)
        self.classes_, y_enc = encode_labels(y, classes=self._known_classes(warm, classes))
        self._train(X, y_enc, warm=warm, epochs=epochs)
        return self

    def _net_spec(self):
        in_shape = self._in_shape()
        return VIBNet, dict(
            module=VIBModule,
            module__in_shape=in_shape,
            module__n_classes=len(self.classes_),
            module__latent_dim=self.latent_dim,
            module__hidden_layer_sizes=self._hidden_layer_sizes(),
            module__conv_width=self.conv_width,
            beta=float(self.beta),
            n_train_samples=self.n_train_samples,
        )

    def _data_layout(self):
        return self._in_shape(), (0.0, 1.0)

    def _inference_module(self):
        """The fitted module in eval mode, and the dtype to run it in.

        On CPU inference runs in float64 on a float64 copy: float32 matrix
        products there may round differently with the number of rows, and a
        row's outputs should not depend on which rows come with it.
        """
        module = self.net_.module_.eval()
        if torch.device(self.device_).type == "cpu":
            return copy.deepcopy(module).double(), torch.float64
        return module, torch.float32

    def _batched(self, fn, X, width):
        """Apply ``fn`` to X in chunks sized to the activation budget."""
        net = self.net_
        in_shape = self._in_shape()
        per_row = max(
            [int(np.prod(in_shape)), width, self.n_test_samples * net.module__latent_dim]
            + list(net.module__hidden_layer_sizes)
            + ([net.module__conv_width * in_shape[1] * in_shape[2]]
               if len(in_shape) == 3 else [])
        )
        chunk = max(1, _INFER_BUDGET // per_row)
        return batched_apply(fn, X, input_range=(0.0, 1.0), image_shape=in_shape,
                             device=self.device_, chunk=chunk, pixels=False)
