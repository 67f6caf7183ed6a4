"""The reliability table of docs/reliability.md: bad inputs tried against the command line, and what came of
each (a clear error, a traceback, a silent wrong result, lost data), produced by running them.

    python scripts/reliability.py            # runs every case, rewrites the table in docs/reliability.md
    python scripts/reliability.py --check    # exits 1 when the table differs from a fresh run

tests/test_reliability.py runs the same cases and fails on any outcome other than a clear error (or a
refusal that kept the data), and when the table in the docs differs from what the cases give.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"

# a tiny, fast classification run: synthetic images, one epoch
SYNTHETIC = "name: synthetic, options: {num_samples: 32, num_classes: 4, channels: 1, size: 8}"
TINY = (
    "experiment: {name: tiny, output_dir: runs}\n"
    "data: {" + SYNTHETIC + "}\n"
    "model: {student: fmnist_tiny, teacher: null}\n"
    "distill: {method: none, weighting: none, ce_weight: 1}\n"
    "train: {epochs: 1, batch_size: 16, num_workers: 0, ckpt_every: 1, diag_every: 0, eval_every: 1}\n"
)
LLM = "model: {teacher: smollm2}\ntrain: {max_steps: 1}\n"
TOPK = (  # a valid teacher top-k of 2 tokens over a vocabulary of 4 (k = 2), then one value changed
    "from functools import partial\n"
    "from eakd.llm import TeacherTopK, TokenLossSettings, chunked_distill_loss\n"
    "loss = partial(chunked_distill_loss, settings=TokenLossSettings(tau=2.0))  # the top-k's tau\n"
    "lp = torch.tensor([[-0.5, -1.5], [-0.2, -2.0]])\n"
    "t = TeacherTopK(torch.tensor([[0, 1], [2, 3]]), lp, torch.tensor([0.9, 0.6]), 4, 1.0, 2.0)\n"
    "h, w, labels = torch.randn(1, 2, 3), torch.randn(4, 3), torch.tensor([[1, 2]])\n"
)
LLM_SETTINGS = "from eakd.llm import TokenLossSettings as S\n"
KD = TINY.replace("teacher: null", "teacher: fmnist_cnn").replace("method: none", "method: kd")
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # downloads refused
# an API case's code runs inside this: a ValueError or TypeError is its one line on stderr and exit 2
API = "import sys\nimport torch\nimport eakd\ntry:\n{body}\nexcept (ValueError, TypeError) as err:\n" + (
    "    print(f'{{type(err).__name__}}: {{err}}', file=sys.stderr)\n    sys.exit(2)\n"
)


@dataclass
class Case:
    """One bad input: ``argv`` for ``eakd`` run in a folder holding ``files``; ``before``: eakd commands run
    first (a finished run to protect; ``["-c", CODE]`` runs Python code, to damage it); ``keep``: files of
    that run that must survive unchanged; ``env``: extra environment variables. ``code``: Python code
    calling the library instead of ``argv`` (see ``API``). ``expect``: a part of the message the outcome
    must show (cases that end well, exit 0)."""

    area: str
    what: str
    argv: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    before: list[list[str]] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    code: str = ""
    expect: str = ""


def api(what: str, code: str, expect: str = "") -> Case:
    """A bad input given to the Python API: ``code`` must raise a ValueError or TypeError of one line (or,
    with ``expect``, end well and print that on stderr)."""
    return Case("python api", what, [], code=code, expect=expect)


CASES = [
    Case("command line", "unknown command", ["nosuch"]),
    Case("command line", "missing argument", ["train"]),
    Case("command line", "unknown option", ["train", "tiny.yaml", "--nosuch"], {"tiny.yaml": TINY}),
    Case("config", "file does not exist", ["train", "missing.yaml"]),
    Case("config", "a directory given as the config file", ["train", "adir"], {"adir/x": ""}),
    Case("config", "YAML syntax error in the file", ["train", "bad.yaml"], {"bad.yaml": "train: [1, 2\n"}),
    Case(
        "config",
        "YAML syntax error in an override",
        ["train", "tiny.yaml", "optim.lr=[1"],
        {"tiny.yaml": TINY},
    ),
    Case(
        "config",
        "YAML python tag (code execution)",
        ["train", "tag.yaml"],
        {"tag.yaml": '!!python/object/apply:os.system ["echo pwned"]\n'},
    ),
    Case("config", "unknown key", ["train", "tiny.yaml", "train.epoch=3"], {"tiny.yaml": TINY}),
    Case("config", "wrong type", ["train", "tiny.yaml", "train.epochs=abc"], {"tiny.yaml": TINY}),
    Case("config", "value out of range", ["train", "tiny.yaml", "train.batch_size=0"], {"tiny.yaml": TINY}),
    Case("config", "NaN learning rate", ["train", "tiny.yaml", "optim.lr=.nan"], {"tiny.yaml": TINY}),
    Case(
        "config",
        "plugin module that does not exist",
        ["train", "tiny.yaml", "imports=[nosuchmod]"],
        {"tiny.yaml": TINY},
    ),
    Case(
        "config",
        "task from a module not listed under imports",
        ["train", "tiny.yaml", "task=os:system"],
        {"tiny.yaml": TINY},
    ),
    Case("config", "empty config file", ["train", "empty.yaml"], {"empty.yaml": ""}),
    Case("config", "binary junk as the config", ["train", "junk.yaml"], {"junk.yaml": bytes(range(256)) * 4}),
    Case(
        "config",
        "distilling with no teacher_checkpoint (a random teacher)",
        ["train", "kd.yaml"],
        {"kd.yaml": KD},
    ),
    Case("config", "empty override value", ["train", "tiny.yaml", "distill.tau="], {"tiny.yaml": TINY}),
    Case("config", "learning rate 1e300", ["train", "tiny.yaml", "optim.lr=1e300"], {"tiny.yaml": TINY}),
    Case(
        "pre-flight",
        "teacher checkpoint not on disk (checked before the data)",
        ["train", "cifar100/kd/res32x4_res8x4"],
    ),
    Case(
        "pre-flight",
        "teacher checkpoint truncated",
        ["train", "kd.yaml", "model.teacher_checkpoint=t.pt"],
        {"kd.yaml": KD, "t.pt": b"PK\x03\x04" + b"\x00" * 40},
    ),
    Case(
        "pre-flight",
        "CIFAR-100 download while offline",
        ["train", "cifar100/kd/res32x4_res8x4", "model.teacher_checkpoint=random"],
        env=OFFLINE,
    ),
    Case(
        "pre-flight",
        "output_dir below a file",
        ["train", "tiny.yaml", "experiment.output_dir=afile/runs"],
        {"tiny.yaml": TINY, "afile": "x"},
    ),
    Case("configs", "packaged config name misspelt", ["train", "cifar100/dkd/res32x4_res8x"]),
    Case("configs", "show an unknown config", ["configs", "show", "demo/kdd"]),
    Case("configs", "filter matching no config", ["configs", "nosuch"]),
    Case(
        "configs",
        "copy onto an existing file",
        ["configs", "copy", "demo/kd", "kd.yaml"],
        {"kd.yaml": "# my edited copy\n"},
        keep=["kd.yaml"],
    ),
    Case("names", "unknown task", ["train", "tiny.yaml", "task=segmentation"], {"tiny.yaml": TINY}),
    Case(
        "names",
        "unknown loss",
        ["train", "tiny.yaml", "distill.method=kdd", "model.teacher=fmnist_cnn"],
        {"tiny.yaml": TINY},
    ),
    Case(
        "names",
        "unknown weight policy",
        ["train", "tiny.yaml", "distill.method=kd", "distill.weighting=eaa", "model.teacher=fmnist_cnn"],
        {"tiny.yaml": TINY},
    ),
    Case(
        "names",
        "policy setting it does not take",
        [
            "train",
            "tiny.yaml",
            "distill.method=kd",
            "distill.weighting=er",
            "distill.h_ub=2",
            "model.teacher=fmnist_cnn",
        ],
        {"tiny.yaml": TINY},
    ),
    Case("names", "unknown model", ["train", "tiny.yaml", "model.student=resnet9000"], {"tiny.yaml": TINY}),
    Case("names", "unknown data set", ["train", "tiny.yaml", "data.name=imagenett"], {"tiny.yaml": TINY}),
    Case(
        "names",
        "data set option it does not take",
        ["train", "tiny.yaml", "data.name=cifar100"],
        {"tiny.yaml": TINY},
    ),
    Case(
        "data",
        "data set not on disk",
        ["train", "fmnist.yaml", "data.root=nodata"],
        {"fmnist.yaml": TINY.replace(SYNTHETIC, "name: fashion_mnist")},
    ),
    Case(
        "runs",
        "second run into a finished run's folder",
        ["train", "tiny.yaml", "optim.lr=0.1"],
        {"tiny.yaml": TINY},
        [["train", "tiny.yaml"]],
        ["runs/tiny/summary.json", "runs/tiny/metrics.csv"],
    ),
    Case(
        "runs",
        "resume=auto with another config",
        ["train", "tiny.yaml", "train.resume=auto", "optim.lr=0.1"],
        {"tiny.yaml": TINY},
        [["train", "tiny.yaml"]],
        ["runs/tiny/summary.json"],
    ),
    Case(
        "runs",
        "resume=auto with the latest checkpoint truncated",
        ["train", "two.yaml", "train.resume=auto"],
        {"two.yaml": TINY.replace("epochs: 1", "epochs: 2")},
        [["train", "two.yaml"], ["-c", "open('runs/tiny/checkpoints/epoch-0002.pt', 'r+b').truncate(1000)"]],
        expect="train.resume=auto: skipped",
    ),
    Case(
        "runs",
        "experiment.name escaping output_dir",
        ["train", "tiny.yaml", "experiment.name=../escaped"],
        {"tiny.yaml": TINY},
    ),
    Case(
        "checkpoints",
        "empty weights file",
        ["eval", "tiny.yaml", "--weights", "empty.pt"],
        {"tiny.yaml": TINY, "empty.pt": b""},
    ),
    Case(
        "checkpoints",
        "truncated checkpoint",
        ["eval", "tiny.yaml", "--weights", "cut.pt"],
        {"tiny.yaml": TINY, "cut.pt": b"PK\x03\x04" + b"\x00" * 40},
    ),
    Case(
        "checkpoints",
        "foreign file as weights",
        ["eval", "tiny.yaml", "--weights", "tiny.yaml"],
        {"tiny.yaml": TINY},
    ),
    Case(
        "checkpoints",
        "directory as weights",
        ["eval", "tiny.yaml", "--weights", "adir"],
        {"tiny.yaml": TINY, "adir/x": ""},
    ),
    Case("report", "folder with no runs", ["report", "adir"], {"adir/x": ""}),
    Case("report", "folder that does not exist", ["report", "nowhere"]),
    Case(
        "report",
        "malformed metrics.csv",
        ["report", "run"],
        {"run/metrics.csv": "epoch,lr,train_loss\n1,0.1,abc\n"},
    ),
    Case("demo", "Fashion-MNIST not on disk", ["demo", "--", "data.root=nodata"]),
    Case("det", "unknown subcommand", ["det", "nosuch"]),
    Case(
        "llm",
        "wrong type in an override",
        ["llm", "train", "llm.yaml", "train.max_steps=abc"],
        {"llm.yaml": LLM},
    ),
    Case(
        "llm", "unknown train key", ["llm", "train", "llm.yaml", "train.lerning_rate=0.1"], {"llm.yaml": LLM}
    ),
    Case("llm", "config file does not exist", ["llm", "train", "missing.yaml"]),
    Case(
        "llm",
        "cache with --top-k 0",
        ["llm", "cache", "llm.yaml", "--top-k", "0", "--out", "c.safetensors"],
        {"llm.yaml": LLM},
    ),
    Case(
        "llm",
        "cache --out naming a directory",
        ["llm", "cache", "llm.yaml", "--out", "adir"],
        {"llm.yaml": LLM, "adir/x": ""},
    ),
    Case("llm", "model that is not available offline", ["llm", "eval", "nosuch-org/nosuch-model"]),
    Case(
        "llm",
        "cache --out naming a user's file (not a cache)",
        ["llm", "cache", "llm.yaml", "--out", "notes.txt"],
        {"llm.yaml": LLM, "notes.txt": "my notes\n"},
        keep=["notes.txt"],
    ),
]


GOOD = ("clear error", "refused, data kept", "handled, said so")


CASES += [
    api(
        "TeacherTopK with a negative entropy",
        TOPK + "loss(h, w, labels, teacher_topk=t._replace(entropy=-t.entropy))",
    ),
    api(
        "TeacherTopK with an entropy above ln V",
        TOPK + "loss(h, w, labels, teacher_topk=t._replace(entropy=t.entropy + 2))",
    ),
    api(
        "TeacherTopK with a positive log-prob",
        TOPK + "loss(h, w, labels, teacher_topk=t._replace(logprobs=-lp))",
    ),
    api(
        "TeacherTopK with a repeated id",
        TOPK + "loss(h, w, labels, teacher_topk=t._replace(ids=torch.tensor([[0, 0], [2, 3]])))",
    ),
    api(
        "TeacherTopK with an id beyond the vocabulary",
        TOPK + "loss(h, w, labels, teacher_topk=t._replace(ids=torch.tensor([[0, 9], [2, 3]])))",
    ),
    api("TeacherTopK with k > V", TOPK + "loss(h, w[:1], labels * 0, teacher_topk=t._replace(vocab_size=1))"),
    api(
        "user policy giving negative weights",
        "eakd.DistillLoss('kd', lambda s, t, mask=None: t[:, 0] - 9, temperature=4.0)"
        "(torch.randn(4, 3), torch.randn(4, 3))",
    ),
    api("weighted_mean with a negative weight", "eakd.weighted_mean(torch.ones(1), torch.tensor([-1.0]))"),
    api("weighted_mean with a NaN weight", "eakd.weighted_mean(torch.ones(1), torch.tensor([float('nan')]))"),
    api("weighted_mean on lists", "eakd.weighted_mean([1.0, 2.0], [1.0, 1.0])"),
    api("TokenLossSettings(ignore_index='x')", LLM_SETTINGS + "S(ignore_index='x')"),
    api("TokenLossSettings(fused='yes')", LLM_SETTINGS + "S(fused='yes')"),
    api(
        "TokenLossSettings(weighting=callable) with a tau set",
        LLM_SETTINGS + "S(weighting=lambda s, t, mask=None: t[..., 0] * 0 + 1, tau=3.0)",
    ),
    api(
        "TokenLossSettings(weighting=callable), tau left at its default",
        LLM_SETTINGS + "p = S(weighting=lambda s, t, mask=None: t[..., 0] * 0 + 1).policy()\n"
        "print(f'the callable gets the settings {p.settings}', file=sys.stderr)",
        expect="the callable gets the settings {}",
    ),
    api("ea_weights on meta tensors", "z = torch.zeros(2, 3, device='meta')\neakd.ea_weights(z, z)"),
    api("get_policy(3)", "eakd.get_policy(3)"),
    api(
        "targets all ignore_index (CE is 0, as on the LLM path)",
        "out = eakd.DistillLoss('kd', 'ea', ce_weight=1.0, temperature=4.0)"
        "(torch.randn(4, 3), torch.randn(4, 3), torch.full((4,), -100))\n"
        "print(f'loss_ce = {out[\"loss_ce\"].item()} with no valid target', file=sys.stderr)",
        expect="loss_ce = 0.0 with no valid target",
    ),
]


# eakd study (issue 23): bad arms and seeds, and study folders that hold something else
STUDY = ["study", "tiny.yaml", "--out", "st"]
ARMS = ["--arm", "a=optim.lr=0.1", "--arm", "b"]
TWO_ARMS = [*ARMS, "--seeds", "0"]
FILES: dict[str, str | bytes] = {"tiny.yaml": TINY}
CASES += [
    Case("study", "unknown key in an arm", [*STUDY, "--arm", "a=optim.lrr=0.1", "--arm", "b"], FILES),
    Case("study", "an arm equal to another", [*STUDY, "--arm", "a=optim.lr=0.05", "--arm", "b"], FILES),
    Case("study", "empty seed list", [*STUDY, *ARMS, "--seeds", ","], FILES),
    Case("study", "repeated seed", [*STUDY, *ARMS, "--seeds", "0,1,0"], FILES),
    Case(
        "study",
        "study folder holding another study",
        [*STUDY, *TWO_ARMS, "--resume", "train.batch_size=8"],
        FILES,
        [[*STUDY, *TWO_ARMS]],
        ["st/study.json", "st/a-seed0/summary.json"],
    ),
    Case(
        "study",
        "study folder in use, without --resume",
        [*STUDY, *TWO_ARMS],
        FILES,
        [[*STUDY, *TWO_ARMS]],
        ["st/study.json", "st/a-seed0/summary.json"],
    ),
    Case(
        "study",
        "--resume with an arm defined otherwise",
        [*STUDY, "--arm", "a=optim.lr=0.2", "--arm", "b", "--seeds", "0", "--resume"],
        FILES,
        [[*STUDY, *TWO_ARMS]],
        ["st/study.json", "st/a-seed0/summary.json"],
    ),
]  # fmt: skip


@dataclass
class Outcome:
    """What a case gave: ``kind`` is "clear error" (exit 2, one stderr line, no traceback), "refused, data
    kept", "handled, said so" (exit 0 with the case's ``expect`` on stderr: a fallback that says so),
    "traceback", "unclear error" (several lines), "silent" (exit 0) or "data lost"."""

    kind: str
    message: str


def eakd(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m eakd ARGV`` in ``cwd`` (offline, no hub access); ``["-c", CODE]`` runs Python code."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "EAKD_CACHE": str(cwd / "cache"),
        **(env or {}),
    }
    env.pop("EAKD_DEBUG", None)
    command = argv if argv[:1] == ["-c"] else ["-m", "eakd", *argv]
    return subprocess.run(
        [sys.executable, *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def run_case(case: Case, folder: Path) -> Outcome:
    """Run ``case`` in the empty folder ``folder``."""
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    for argv in case.before:
        done = eakd(argv, folder)
        if done.returncode != 0:
            return Outcome("setup failed", done.stderr.strip().splitlines()[-1:][0] if done.stderr else "")
    kept = {name: (folder / name).read_bytes() for name in case.keep}
    argv = ["-c", API.format(body=textwrap.indent(case.code, "    "))] if case.code else case.argv
    done = eakd(argv, folder, case.env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    said = [line for line in (done.stderr + done.stdout).splitlines() if case.expect and case.expect in line]
    message = (said or lines)[-1] if said or lines else done.stdout.strip()[-200:]
    for where in (str(folder.resolve()), str(folder)):  # the temporary folder reads as "."
        message = message.replace(where, ".")
    if any((folder / n).read_bytes() != data if (folder / n).is_file() else True for n, data in kept.items()):
        return Outcome("data lost", message)
    if "Traceback" in done.stderr:
        return Outcome("traceback", message)
    if done.returncode == 0:
        return Outcome("handled, said so" if said else "silent", message)
    if done.returncode != 2 or len(lines) != 1 or case.expect:
        return Outcome("unclear error", message)
    return Outcome("refused, data kept" if case.keep else "clear error", message)


def run_all(cases: list[Case] = CASES, progress: Callable[[str], None] = print) -> list[Outcome]:
    """Every case in its own temporary folder."""
    outcomes = []
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            outcomes.append(run_case(case, Path(tmp)))
        progress(f"{case.area}: {case.what}: {outcomes[-1].kind}")
    return outcomes


def table(cases: list[Case], outcomes: list[Outcome]) -> str:
    """Markdown: a summary per area (inputs tried, clear errors, silent wrong, data lost, tracebacks), then
    every case with the line the user saw."""
    areas = list(dict.fromkeys(c.area for c in cases))
    lines = [
        "| area | inputs tried | clear errors (or handled, said so) | silent wrong | data lost "
        "| tracebacks / unclear |",
        "|---|---|---|---|---|---|",
    ]
    for area in [*areas, "all"]:
        kinds = [o.kind for c, o in zip(cases, outcomes, strict=True) if area in ("all", c.area)]
        good = sum(k in GOOD for k in kinds)
        bad = sum(k in ("traceback", "unclear error", "setup failed") for k in kinds)
        silent, lost = kinds.count("silent"), kinds.count("data lost")
        lines.append(f"| {area} | {len(kinds)} | {good} | {silent} | {lost} | {bad} |")
    lines += ["", "| area | input | outcome | what the user reads (stderr) |", "|---|---|---|---|"]
    for case, outcome in zip(cases, outcomes, strict=True):
        code = case.code.replace(TOPK, "(t: a valid TeacherTopK, V=4, k=2)\n")
        command = "python: " + "; ".join(code.splitlines()) if case.code else " ".join(["eakd", *case.argv])
        shown = outcome.message.replace("|", "\\|")
        lines.append(f"| {case.area} | {case.what}: `{command}` | {outcome.kind} | {shown} |")
    return "\n".join(lines)


def with_table(doc: str, text: str) -> str:
    """``doc`` with the part between the table markers replaced by ``text``."""
    head, rest = doc.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{text}\n{END}{tail}"


def main() -> int:
    outcomes = run_all()
    doc = DOC.read_text()
    new = with_table(doc, table(CASES, outcomes))
    if "--check" in sys.argv[1:]:
        return int(new != doc)
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
