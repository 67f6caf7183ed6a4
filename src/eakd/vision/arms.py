"""The arms of the Fashion-MNIST demo and study as data: each arm an override list of the config demo/kd,
the arm it is compared with, each arm's seeds, and the paper's claims the study checks (docs/studies.md).

A study stores these lists with its runs and reruns an arm whose list changed (``eakd.study.reusable_runs``).
"""

from __future__ import annotations

from eakd.study import Claim

# DKD (alpha 1, beta 8, T 4, CE 1) with its warm-up scaled to the short budget (1 of 5 epochs).
DKD = [
    "distill.method=dkd",
    "distill.ce_weight=1.0",
    "distill.kd_weight=1.0",
    "distill.warmup_epochs=1.0",
    "distill.hparams={alpha: 1.0, beta: 8.0, temperature: 4.0}",
]
# MLKD as configured on CIFAR (weak + strong views, KD terms at T 2..6 with class and batch correlation;
# the first study's arm, at the demo's lr 0.05), and the recipe chosen for this data on the validation split
# (benchmarks/fmnist_mlkd_pilot.py, docs/studies.md): MLKD's own CIFAR learning rate, half the demo's, since
# its summed terms are about 14x KD's loss here and at lr 0.05 students collapse
MLKD_CIFAR = ["data.two_views=true", "distill.method=mlkd", "distill.hparams={temperature: 4.0}"]
MLKD = [*MLKD_CIFAR, "optim.lr=0.025"]
# logit standardisation on KD as its authors' KD recipe (base temperature 2, KD weight 9, CE 0.1)
LS = ["distill.standardize_logits=true", "distill.kd_weight=9.0", "distill.hparams={temperature: 2.0}"]
# CTKD on KD: one learnable temperature (start 4), its reversal curriculum over the first of the 5 epochs
CTKD = [
    "distill.method=ctkd",
    "distill.hparams=null",  # replaces demo/kd's hparams (overrides merge mappings)
    "distill.hparams={mode: global, base: kd, init_temperature: 4.0, lambda_end: 1.0}",
]
# the heterogeneous pair: the CNN teacher -> a batch-norm-free MLP student (784-16-10, 12.7k parameters)
HET = ["model.student=mlp", "model.student_options={hidden: [16]}"]
SETTINGS: dict[str, list[str]] = {
    "no-kd": ["distill.method=none", "distill.weighting=none", "distill.ce_weight=1.0"],
    "kd": ["distill.weighting=none"],
    "ea-kd": ["distill.weighting=ea"],
    "er-kd": ["distill.weighting=er", "distill.tau=4.0"],  # ER-KD as published: w = H_t at tau 4
    "inverse-kd": ["distill.weighting=inverse"],  # negative control: emphasises confident samples
    "base-kd": ["distill.weighting=base"],  # EA's static half: w = H_t (tau 3)
    "interact-kd": ["distill.weighting=interact"],  # EA's dynamic half: w = H_t H_s / H_ub
    "ea-kd-norm": ["distill.weighting=ea", "distill.weight_norm=mean"],
    "ea-kd-hub100": ["distill.weighting=ea", "distill.h_ub=100.0"],  # the authors' CIFAR H_ub
    **{f"ea-kd-tau{t}": ["distill.weighting=ea", f"distill.tau={t}.0"] for t in (1, 2, 4, 5)},
    "dkd": [*DKD, "distill.weighting=none"],
    "ea-dkd": [*DKD, "distill.weighting=ea"],
    "mlkd": [*MLKD, "distill.weighting=none"],
    "ea-mlkd": [*MLKD, "distill.weighting=ea"],
    "ls-kd": [*LS, "distill.weighting=none"],
    "ea-ls-kd": [*LS, "distill.weighting=ea"],
    "ctkd": [*CTKD, "distill.weighting=none"],
    "ea-ctkd": [*CTKD, "distill.weighting=ea"],
    "kd-het": [*HET, "distill.weighting=none"],
    "ea-kd-het": [*HET, "distill.weighting=ea"],
}
# what each arm is compared with, paired by seed: its method without the weights, or KD for the controls
# and ablations
REFERENCE = {
    "no-kd": "kd",
    "ea-kd": "kd",
    "er-kd": "kd",
    "inverse-kd": "kd",
    "base-kd": "kd",
    "interact-kd": "kd",
    "ea-kd-norm": "kd",
    "ea-kd-hub100": "kd",
    **{f"ea-kd-tau{t}": "kd" for t in (1, 2, 4, 5)},
    "ea-dkd": "dkd",
    "mlkd": "kd",
    "ea-mlkd": "mlkd",
    "ls-kd": "kd",
    "ea-ls-kd": "ls-kd",
    "ctkd": "kd",
    "ea-ctkd": "ctkd",
    "ea-kd-het": "kd-het",
}
# the Fashion-MNIST study (benchmarks/fmnist_study.py): its arms in table order and each arm's seeds
PRIMARY = ["kd", "ea-kd", "dkd", "ea-dkd", "mlkd", "ea-mlkd", "kd-het", "ea-kd-het"]
STUDY_ARMS = list(SETTINGS)


def study_seeds(primary: int = 20, other: int = 10) -> dict[str, list[int]]:
    """Each study arm's seeds: 0..primary-1 for the primary arms (20: a 95 % half-width of about 0.45
    points at their paired spread of about 0.95), 0..other-1 for the controls and ablations."""
    return {arm: list(range(primary if arm in PRIMARY else other)) for arm in STUDY_ARMS}


# the primary comparisons, each arm against its reference
PRIMARY_PAIRS = [("ea-kd", "kd"), ("ea-dkd", "dkd"), ("ea-mlkd", "mlkd"), ("ea-kd-het", "kd-het")]

# The paper's findings (ICCV 2025; /work/shared/spec/METHOD.md sections 1 and 4: CIFAR-100, ResNet32x4 ->
# ResNet8x4 unless said otherwise), each as an arm, its reference and the reported direction.
PAPER_CLAIMS = [
    Claim("EA-KD beats KD", "75.46 vs 73.33; +1.48 over 7 pairs", "ea-kd", "kd", 1),
    Claim("w = H_t alone (ER) beats KD", "75.14 vs 73.33", "er-kd", "kd", 1),
    Claim("w = H_t alone (EA's static half, tau 3) beats KD", "75.14 vs 73.33", "base-kd", "kd", 1),
    Claim("the interaction half alone beats KD", "74.76 vs 73.33", "interact-kd", "kd", 1),
    Claim("EA beats its static half", "75.46 vs 75.14", "ea-kd", "base-kd", 1),
    Claim("EA beats its interaction half", "75.46 vs 74.76", "ea-kd", "interact-kd", 1),
    Claim("inverse weighting hurts", "72.73 vs 73.33", "inverse-kd", "kd", -1),
    *(Claim(f"tau 3 beats tau {t}", "tau 3 best", "ea-kd", f"ea-kd-tau{t}", 1) for t in (1, 2, 4, 5)),
    Claim("EA-KD with the authors' H_ub = 100 beats KD", "their CIFAR KD runs", "ea-kd-hub100", "kd", 1),
    Claim("EA-DKD beats DKD", "+0.47 over the pairs", "ea-dkd", "dkd", 1),
    Claim("EA-MLD beats MLD", "77.65 vs 77.08", "ea-mlkd", "mlkd", 1),
    Claim("EA-CTKD beats CTKD", "+0.63 over the pairs", "ea-ctkd", "ctkd", 1),
    Claim(
        "EA helps with logit standardisation (here on KD)", "MLD+LS 78.38 vs 78.28", "ea-ls-kd", "ls-kd", 1
    ),
    Claim("EA-KD beats KD on a heterogeneous pair", "e.g. VGG13 -> MobileNetV2", "ea-kd-het", "kd-het", 1),
]
