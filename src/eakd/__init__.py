"""eakd: Entropy-based Adaptive Knowledge Distillation (EA-KD, Su et al., ICCV 2025).

Per-sample entropy weights that compose with any per-sample distillation loss::

    import eakd
    w = eakd.ea_weights(student_logits, teacher_logits, tau=3.0)        # (N,), detached
    loss = eakd.weighted_mean(eakd.losses.kd_loss(student_logits, teacher_logits, 4.0), w)
"""

from importlib.metadata import PackageNotFoundError, version

from eakd import losses
from eakd.distill import DistillLoss
from eakd.losses.reduce import weighted_mean
from eakd.weighting import POLICIES, ea_weights, entropy, er_weights, get_policy, register_policy, standardize

try:
    __version__ = version("eakd")  # one place: the package metadata (pyproject.toml)
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "POLICIES",
    "DistillLoss",
    "__version__",
    "ea_weights",
    "entropy",
    "er_weights",
    "get_policy",
    "losses",
    "register_policy",
    "standardize",
    "weighted_mean",
]
