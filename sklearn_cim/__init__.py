"""sklearn_cim: Contrastive Input Morphing for scikit-learn."""

from ._cim import CIMTransformer
from ._distances import TrunkWeightsUnavailableError
from ._objective import clear_metric_cache
from ._removal import PaperObjectiveWarning, RemovalWarning
from ._show_versions import show_versions
from ._version import __version__
from ._vib import VIBClassifier

__all__ = [
    "CIMTransformer", "PaperObjectiveWarning", "RemovalWarning",
    "TrunkWeightsUnavailableError",
    "VIBClassifier", "clear_metric_cache", "show_versions",
    "__version__",
]
