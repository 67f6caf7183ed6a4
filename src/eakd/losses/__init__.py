"""Per-sample distillation losses (never reduced inside), their registry and the weighted reduction."""

from eakd.losses import feature as feature  # registers fitnet, reviewkd
from eakd.losses import mlkd as mlkd  # registers mlkd
from eakd.losses import temperature as temperature  # registers ctkd
from eakd.losses import token as token  # registers fkl, rkl, jsd, skl, srkl, tvd
from eakd.losses.logit import cross_entropy, dkd_loss, kd_loss, linear_warmup
from eakd.losses.reduce import weighted_mean
from eakd.losses.registry import LOSSES, get_loss, register_loss

__all__ = [
    "LOSSES",
    "cross_entropy",
    "dkd_loss",
    "get_loss",
    "kd_loss",
    "linear_warmup",
    "register_loss",
    "weighted_mean",
]
