"""The shipped configs: every file loads and validates, the recipes match the published ones, the models
exist, and every CIFAR-100 pair x method (plus one ImageNet pair) takes a real training step on tiny
synthetic data."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torchvision

from eakd.cli import main
from eakd.distill import DistillLoss
from eakd.engine.catalog import config_root, find_config, list_configs, resolved_text
from eakd.engine.config import ConfigError, load_config, read_yaml
from eakd.engine.task import build_task
from eakd.vision.models import list_models

CONFIGS = config_root()
SHIPPED = sorted(
    p for d in ("cifar100", "imagenet", "tinyimagenet", "demo") for p in (CONFIGS / d).rglob("*.yaml")
)
# runnable experiments: not the shared base files or the pair fragments
LEAVES = [p for p in SHIPPED if p.name != "base.yaml" and p.parent.name != "pairs"]
CIFAR_PAIRS = [
    "res32x4_res8x4",
    "res32x4_shuv2",
    "res50_mv2",
    "vgg13_mv2",
    "vgg13_vgg8",
    "wrn40_2_wrn16_2",
    "wrn40_2_wrn40_1",
]
CIFAR_METHODS = ["kd", "dkd", "mlkd", "mlkd_ls", "ctkd", "reviewkd", "fitnet", "vanilla"]
AUTHORS_METHODS = ["kd", "dkd"]  # the EA-KD authors' CIFAR code: H_ub = 100.0 there
DKD_BETA_6 = ["vgg13_mv2", "vgg13_vgg8", "wrn40_2_wrn16_2", "wrn40_2_wrn40_1"]  # mdistiller's per-pair beta


def rel(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def model_exists(name: str) -> bool:
    if name.startswith("tv:"):
        return name.removeprefix("tv:") in torchvision.models.list_models()
    return name in list_models()


@pytest.mark.parametrize("path", SHIPPED, ids=rel)
def test_every_config_loads(path):
    cfg = load_config(path)
    if path in LEAVES:
        assert cfg.experiment.name not in ("", "run")
        assert model_exists(cfg.model.student)
        assert cfg.model.teacher is None or model_exists(cfg.model.teacher)


def test_cifar_grid_is_complete():
    found = {rel(p) for p in LEAVES if p.is_relative_to(CONFIGS / "cifar100")}
    grid = {f"cifar100/{m}/{p}.yaml" for m in CIFAR_METHODS for p in CIFAR_PAIRS}
    authors = {f"cifar100/{m}/{p}_authors.yaml" for m in AUTHORS_METHODS for p in CIFAR_PAIRS}
    assert found == grid | authors


@pytest.mark.parametrize("pair", CIFAR_PAIRS)
@pytest.mark.parametrize("method", CIFAR_METHODS)
def test_cifar_recipe(method, pair):
    cfg = load_config(CONFIGS / "cifar100" / method / f"{pair}.yaml")
    light = cfg.model.student in ("mobilenetv2", "shufflenetv2")
    assert (cfg.data.name, cfg.train.batch_size, cfg.optim.momentum) == ("cifar100", 64, 0.9)
    assert (cfg.optim.weight_decay, cfg.schedule.milestones, cfg.schedule.gamma) == (
        5e-4,
        [150, 180, 210],
        0.1,
    )
    assert cfg.experiment.name == f"{method}_{pair}"
    assert cfg.model.teacher_checkpoint.startswith("download_ckpts/cifar_teachers/")
    assert cfg.model.teacher_checkpoint.endswith("_vanilla/ckpt_epoch_240.pth")
    d = cfg.distill
    if method.startswith("mlkd"):
        assert cfg.train.epochs == 480 and cfg.data.two_views
        assert cfg.optim.lr == {"mobilenetv2": 0.0025, "shufflenetv2": 0.01}.get(cfg.model.student, 0.025)
        assert d.standardize_logits == (method == "mlkd_ls")
    else:
        assert cfg.train.epochs == 240 and cfg.optim.lr == (0.01 if light else 0.05)
    if method == "vanilla":
        assert (d.method, d.weighting, d.ce_weight) == ("none", "none", 1.0)
        return
    assert (d.weighting, d.tau) == ("ea", 3.0)
    if method in ("kd", "ctkd", "mlkd"):
        assert (
            d.ce_weight,
            d.kd_weight,
            d.hparams["temperature" if method != "ctkd" else "init_temperature"],
        ) == (
            0.1,
            0.9,
            4.0,
        )
    if method == "dkd":
        assert (d.ce_weight, d.warmup_epochs) == (1.0, 20)
        assert d.hparams == {"alpha": 1.0, "beta": 6.0 if pair in DKD_BETA_6 else 8.0, "temperature": 4.0}
    if method == "reviewkd":
        assert (d.ce_weight, d.kd_weight, d.warmup_epochs) == (1.0, 5.0, 20)


@pytest.mark.parametrize("pair", CIFAR_PAIRS)
@pytest.mark.parametrize("method", AUTHORS_METHODS)
def test_authors_variants_differ_only_in_h_ub(method, pair):
    """``<method>/<pair>_authors`` is ``<method>/<pair>`` with the authors' H_ub = 100.0 (ours: ln K)."""
    ours = load_config(f"cifar100/{method}/{pair}")
    authors = load_config(f"cifar100/{method}/{pair}_authors")
    assert (ours.distill.h_ub, authors.distill.h_ub) == (None, 100.0)
    assert authors.experiment.name == f"{method}_{pair}_authors"
    back = ["distill.h_ub=null", f"experiment.name={method}_{pair}"]
    assert load_config(f"cifar100/{method}/{pair}_authors", back) == ours


def test_configs_differ_from_published_recipes_only_with_a_reason():
    """Every packaged CIFAR-100 config against results/cifar100_recipes.json (the published recipes, the
    table in docs/engine.md): each difference has its reason recorded there."""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("tables", root / "scripts" / "tables.py")
    assert spec is not None and spec.loader is not None
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    recorded = json.loads((root / "results" / "cifar100_recipes.json").read_text())
    compared = tables.recipe_differences(recorded["published"])
    assert len(compared) == len(CIFAR_METHODS) * len(CIFAR_PAIRS) + len(AUTHORS_METHODS) * len(CIFAR_PAIRS)
    unexplained = [
        (name, source, field, value)
        for name, (_, found) in compared.items()
        for source, field, value in found
        if f"{name.split('/')[0]}: {field}" not in recorded["reasons"]
    ]
    assert unexplained == []
    assert compared["dkd/vgg13_vgg8"][1] == [("EA-KD", "h_ub", 100.0)]  # beta 6 as mdistiller's
    assert compared["kd/res32x4_res8x4_authors"] == (["mdistiller", "EA-KD"], [])


ONE_PER_METHOD = [p for p in LEAVES if "res32x4_res8x4" in p.name or p.is_relative_to(CONFIGS / "imagenet")]


@pytest.mark.parametrize("path", ONE_PER_METHOD, ids=rel)
def test_weighting_none_gives_the_baseline_loss(path):
    """Each method's loss builds with EA, and with `distill.weighting=none` unweighted (a config's tau is
    then ignored). The other pairs share the method's base file."""
    ea = DistillLoss.from_config(load_config(path).distill)
    base = DistillLoss.from_config(load_config(path, ["distill.weighting=none"]).distill)
    if ea is None:  # the student alone
        assert base is None
        return
    assert ea.policy is not None and ea.policy.tau == load_config(path).distill.tau
    assert base.policy is None and base.weighting == "none"


def test_imagenet_recipe():
    for path in (p for p in LEAVES if p.is_relative_to(CONFIGS / "imagenet")):
        cfg = load_config(path)
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.batch_size, cfg.train.epochs) == (
            0.2,
            1e-4,
            512,
            100,
        )
        assert cfg.schedule.milestones == [30, 60, 90] and cfg.distill.tau == 2.0
    kd = load_config(CONFIGS / "imagenet" / "kd" / "r34_r18.yaml").distill
    assert (kd.ce_weight, kd.kd_weight, kd.hparams["temperature"]) == (1.0, 0.5, 1.0)


def tiny_step(path: Path, size: int = 32, classes: int = 100, *overrides: str) -> dict[str, torch.Tensor]:
    """One training step of the config's own task on 4 synthetic images (no data, no checkpoints)."""
    cfg = load_config(
        path,
        [
            "data.name=synthetic",
            "data.download=false",
            f"data.options={{num_samples: 4, num_classes: {classes}, channels: 3, size: {size}}}",
            "model.teacher_checkpoint=null",
            *overrides,
        ],
    )
    task = build_task(cfg)
    batch = next(iter(torch.utils.data.DataLoader(task.train_set, batch_size=4)))
    if task.teacher is not None:
        task.teacher.eval()
    terms = task.training_step(task.trainable, batch, epoch=30.0)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    return terms


@pytest.mark.slow
@pytest.mark.parametrize("pair", CIFAR_PAIRS)
def test_cifar_pairs_take_a_step(pair):
    """Every pair's models build, and the feature methods' channel settings fit them."""
    for method in ("reviewkd", "fitnet"):
        terms = tiny_step(CONFIGS / "cifar100" / method / f"{pair}.yaml")
        assert set(terms) == {"loss_kd", "loss_ce"}


@pytest.mark.parametrize("method", CIFAR_METHODS)
def test_cifar_methods_take_a_step(method):
    terms = tiny_step(CONFIGS / "cifar100" / method / "res32x4_res8x4.yaml")
    assert ("loss_kd" in terms) == (method != "vanilla")


def test_imagenet_pair_takes_a_step():
    path = CONFIGS / "imagenet" / "kd" / "r34_r18.yaml"
    terms = tiny_step(path, 64, 1000, "model.teacher_options.pretrained=false")  # no download
    assert set(terms) == {"loss_kd", "loss_ce"}


def test_overrides_apply():
    cfg = load_config(
        CONFIGS / "cifar100" / "dkd" / "res32x4_res8x4.yaml",
        [
            "distill.weighting=none",
            "optim.lr=0.1",
            "distill.hparams.beta=6",
            "model.teacher_checkpoint=t.pth",
        ],
    )
    assert (cfg.distill.weighting, cfg.optim.lr, cfg.model.teacher_checkpoint) == ("none", 0.1, "t.pth")
    assert cfg.distill.hparams == {"alpha": 1.0, "beta": 6, "temperature": 4.0}


# the catalog: packaged configs by name (eakd.engine.catalog, `eakd configs`)


def test_names_and_paths_load_the_same_config(tmp_path, monkeypatch):
    path = CONFIGS / "cifar100" / "dkd" / "res32x4_res8x4.yaml"
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the names come from the package
    names = ("cifar100/dkd/res32x4_res8x4", "cifar100/dkd/res32x4_res8x4.yaml")
    for name in (*names, "configs/cifar100/dkd/res32x4_res8x4.yaml"):  # the last: a clone's old path
        assert find_config(name) == path
        assert load_config(name, ["optim.lr=0.1"]) == load_config(path, ["optim.lr=0.1"])
    assert find_config("llm/deepspeed/zero2.json") == CONFIGS / "llm" / "deepspeed" / "zero2.json"


def test_an_existing_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "demo" / "kd.yaml"
    local.parent.mkdir()
    local.write_text("experiment: {name: mine}\n")
    assert find_config("demo/kd.yaml") == Path("demo/kd.yaml")
    assert load_config("demo/kd.yaml").experiment.name == "mine"
    assert load_config("demo/kd").experiment.name == "student"  # no file demo/kd here: the packaged one


def test_unknown_name_suggests_close_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"does not exist.*did you mean 'cifar100/dkd/res32x4_res8x4'"):
        find_config("cifar100/dkd/res32x4_res8x")
    with pytest.raises(ConfigError, match=r"^config file /no/such\.yaml does not exist$"):
        load_config("/no/such.yaml")


def test_list_filters_by_substring_or_glob():
    names = list_configs()
    assert len(names) == len([p for p in CONFIGS.rglob("*") if p.is_file()])
    assert "cifar100/dkd/res32x4_res8x4" in names and "llm/deepspeed/zero2.json" in names
    assert list_configs("demo/") == ["demo/base", "demo/kd", "demo/teacher"]
    assert list_configs("cifar100/*/res32x4_res8x4") == [
        f"cifar100/{m}/res32x4_res8x4" for m in sorted([*CIFAR_METHODS, "pairs"])
    ]
    assert list_configs("nothing-like-this") == []


@pytest.mark.parametrize("name", [n for n in list_configs() if n.endswith(".json") or "/" in n])
def test_resolved_text_stands_alone(name, tmp_path):
    """Every packaged config's resolved text reads back, alone, as the same mapping as the config with its
    base files (the JSON DeepSpeed file as it is)."""
    copy = tmp_path / "copy.yaml"
    copy.write_text(resolved_text(name))
    if name.endswith(".json"):
        assert copy.read_text() == (CONFIGS / name).read_text()
    else:
        assert read_yaml(copy) == read_yaml(CONFIGS / f"{name}.yaml")


def test_configs_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["configs", "demo"]) == 0
    assert capsys.readouterr().out.split() == ["demo/base", "demo/kd", "demo/teacher"]
    assert main(["configs", "show", "demo/kd"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("# demo/kd, with its base files merged in") and "base:" not in shown
    assert main(["configs", "copy", "demo/kd", "mine.yaml"]) == 0
    assert load_config("mine.yaml") == load_config("demo/kd")
    (tmp_path / "sub").mkdir()
    assert main(["configs", "copy", "demo/teacher", "sub"]) == 0
    assert load_config("sub/teacher.yaml") == load_config("demo/teacher")
    capsys.readouterr()
    before = (tmp_path / "mine.yaml").read_text()
    for argv, message in [
        (["configs", "copy", "demo/teacher", "mine.yaml"], "mine.yaml exists; not overwritten"),
        (["configs", "show", "demo/kdd"], "did you mean 'demo/kd'"),
        (["configs", "zzz"], "no packaged config matches 'zzz'"),
        (["train", "cifar100/dkd/res32x4_res8x"], "did you mean 'cifar100/dkd/res32x4_res8x4'"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "mine.yaml").read_text() == before
