"""Offline teacher: top-k reconstruction, the loss against a cached teacher (chunked == dense reference,
values and gradients), the cache file, and EAKDTrainer in offline mode."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import eakd
from eakd.llm import TeacherTopK, TokenLossSettings, chunked_distill_loss, distill_loss_from_logits
from eakd.llm.sparse import topk_log_probs
from eakd.losses import get_loss
from eakd.losses.token import token_mask

B, T, H, V = 2, 7, 8, 23


def _case(seed: int = 0, k: int = 5, temperature: float = 1.0, tau: float = 2.0):
    """Student hidden/lm_head (grad), teacher logits, labels, and the teacher's top-k cache of valid rows."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.8).requires_grad_()
    zt = torch.randn(B, T, V, generator=g) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = -100
    labels[1, 5:] = -100
    valid = token_mask(labels).reshape(-1)
    zt_valid = zt.reshape(-1, V)[valid]
    full = torch.log_softmax(zt_valid / temperature, -1)
    lp, ids = full.topk(k, -1)
    tail = full.scatter(-1, ids, -torch.inf).logsumexp(-1)
    topk = TeacherTopK(ids, lp, eakd.entropy(zt_valid, tau), V, temperature, tau, tail)
    return hidden, weight, zt, labels, topk


def reference(hidden, weight, labels, topk: TeacherTopK, s: TokenLossSettings):
    """Materialised student logits; the teacher rebuilt here (top-k + evenly spread rest); public losses."""
    zs = hidden @ weight.t()
    mask = token_mask(labels)
    valid = mask.reshape(-1)
    p = torch.full((B * T, V), 1.0 / V)
    k = topk.ids.shape[1]
    rest = (1 - topk.logprobs.exp().sum(-1, keepdim=True)) / (V - k)
    p_valid = rest.expand(-1, V).clone().scatter(1, topk.ids, topk.logprobs.exp())
    p[valid] = p_valid
    log_p = p.log().view(B, T, V)
    kw = {"beta": s.beta} if s.divergence == "jsd" else {"alpha": s.alpha} if "skl" in s.divergence else {}
    # teacher "logits" log_p * T: their softmax at temperature T is p itself
    per_token = get_loss(s.divergence)(zs, log_p * s.temperature, temperature=s.temperature, **kw)
    w = None
    if s.weighting == "ea":
        h_s = eakd.entropy(zs.detach(), s.tau)
        h_t = torch.zeros(B * T)
        h_t[valid] = topk.entropy
        w = 0.5 * h_t.view(B, T) * (1 + h_s / math.log(V)) * mask
        if s.weight_level == "sequence":
            w = ((w.sum(1, keepdim=True) / mask.sum(1, keepdim=True)).expand_as(w)) * mask
    return eakd.weighted_mean(per_token, w, mask)


def test_topk_log_probs_rebuild_a_distribution() -> None:
    z = torch.randn(6, V)
    full = torch.log_softmax(z, -1)
    lp, ids = full.topk(V, -1)
    torch.testing.assert_close(topk_log_probs(ids, lp, V), full)  # k = V: exactly the teacher
    lp, ids = full.topk(4, -1)
    rebuilt = topk_log_probs(ids, lp, V)
    torch.testing.assert_close(rebuilt.logsumexp(-1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(rebuilt.gather(-1, ids), lp)
    rest = rebuilt.exp().sum(-1) - lp.exp().sum(-1)
    torch.testing.assert_close(rest, 1 - lp.exp().sum(-1), atol=1e-6, rtol=0)


def test_exact_tail_mass_survives_a_peaked_teacher() -> None:
    """When the top-k hold all but 1e-9 of the mass, 1 - sum(top-k) is float noise; the stored tail is not."""
    z = torch.zeros(3, V)
    z[:, :4] = 25.0  # 4 tokens share all but ~19 * e^-25 / 4 of the mass
    full = torch.log_softmax(z.double(), -1)
    lp, ids = full.topk(4, -1)
    tail = full.scatter(-1, ids, -torch.inf).logsumexp(-1)
    rebuilt = topk_log_probs(ids, lp.float(), V, tail.float())
    torch.testing.assert_close(rebuilt.double(), full, rtol=0, atol=1e-5)  # every tail token is exact here
    assert float(tail[0]) < -20


@pytest.mark.parametrize("divergence", ["fkl", "rkl", "jsd", "skl", "srkl", "tvd"])
@pytest.mark.parametrize("weighting", ["ea", None])
@pytest.mark.parametrize("chunk", [3, 64])
def test_cached_teacher_chunked_equals_reference(divergence: str, weighting: str | None, chunk: int) -> None:
    hidden, weight, _, labels, topk = _case(seed=1)
    s = TokenLossSettings(divergence=divergence, weighting=weighting, tau=2.0)
    out = chunked_distill_loss(hidden, weight, labels, teacher_topk=topk, settings=s, chunk_size=chunk)
    ref = reference(hidden, weight, labels, topk, s)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(
        torch.autograd.grad(out.loss, (hidden, weight)),
        torch.autograd.grad(ref, (hidden, weight)),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weight_level", ["token", "sequence"])
def test_cached_teacher_dense_path_and_temperature(weight_level: str) -> None:
    hidden, weight, _, labels, topk = _case(seed=2, temperature=2.0)
    s = TokenLossSettings(divergence="jsd", temperature=2.0, tau=2.0, weight_level=weight_level)
    fused = chunked_distill_loss(hidden, weight, labels, teacher_topk=topk, settings=s, chunk_size=4)
    dense = distill_loss_from_logits(hidden @ weight.t(), None, labels, s, teacher_topk=topk)
    ref = reference(hidden, weight, labels, topk, s)
    torch.testing.assert_close(fused.loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dense.loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.weights, dense.weights)
    torch.testing.assert_close(fused.h_t, dense.h_t)
    torch.testing.assert_close(fused.h_s, dense.h_s)
    mask = token_mask(labels).reshape(-1)
    torch.testing.assert_close(fused.h_t[mask], topk.entropy)
    torch.testing.assert_close(fused.h_s, eakd.entropy(hidden @ weight.t(), 2.0).flatten() * mask)


def test_full_cache_equals_the_online_teacher() -> None:
    """k = V: the cached teacher is the teacher, so the loss and gradients equal the online loss."""
    hidden, weight, zt, labels, topk = _case(seed=3, k=V, temperature=1.5)
    s = TokenLossSettings(divergence="rkl", temperature=1.5, tau=2.0, ce_weight=0.3)
    offline = chunked_distill_loss(hidden, weight, labels, teacher_topk=topk, settings=s)
    online = chunked_distill_loss(hidden, weight, labels, teacher_logits=zt, settings=s)
    torch.testing.assert_close(offline.loss, online.loss)
    torch.testing.assert_close(offline.weights, online.weights)
    for got, want in zip(
        torch.autograd.grad(offline.loss, (hidden, weight)),
        torch.autograd.grad(online.loss, (hidden, weight)),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["ea", "er", "base", "interact", "inverse", "uniform"])
def test_weights_from_entropies_equal_the_logit_policies(name: str) -> None:
    zs, zt = torch.randn(5, V), torch.randn(5, V) * 3
    kw = {} if name == "uniform" else {"tau": 2.0}
    want = eakd.get_policy(name, **kw)(zs, zt)
    got = eakd.get_policy(name, **kw).from_entropies(eakd.entropy(zs, 2.0), eakd.entropy(zt, 2.0), V)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="no entropy form"):
        eakd.get_policy(lambda student_logits, teacher_logits, mask=None: zs).from_entropies(zs, zt, V)


def test_cache_mismatches_are_clear_errors() -> None:
    hidden, weight, _, labels, topk = _case(seed=4, temperature=2.0)
    with pytest.raises(ValueError, match=r"temperature 2\.0"):
        chunked_distill_loss(hidden, weight, labels, teacher_topk=topk, settings=TokenLossSettings())
    s = TokenLossSettings(temperature=2.0, tau=3.0)
    with pytest.raises(ValueError, match="tau"):
        chunked_distill_loss(hidden, weight, labels, teacher_topk=topk, settings=s)
    s = TokenLossSettings(temperature=2.0, tau=2.0)
    short = labels.clone()
    short[0, 3] = -100
    with pytest.raises(ValueError, match="labelled tokens"):
        chunked_distill_loss(hidden, weight, short, teacher_topk=topk, settings=s)
    with pytest.raises(ValueError, match="give one teacher"):
        chunked_distill_loss(hidden, weight, labels, teacher_logits=torch.zeros(B, T, V), teacher_topk=topk)
    with pytest.raises(ValueError, match="either teacher_logits or teacher_topk"):
        distill_loss_from_logits(hidden @ weight.t(), None, labels, s)


# -- the cache file and the trainer, on the tiny Llama of the pipeline tests -------------------------------

transformers = pytest.importorskip("transformers")

from test_llm_pipeline import _config, teacher, tokenizer  # noqa: E402, F401
from tiny_llm import PAIRS  # noqa: E402

from eakd.engine.logs import read_csv  # noqa: E402
from eakd.llm.cache import TeacherCache, build_cache  # noqa: E402
from eakd.llm.data import collate, encode_pairs  # noqa: E402
from eakd.llm.models import make_student  # noqa: E402
from eakd.llm.trainer import EAKDTrainer  # noqa: E402


def test_cache_file_roundtrip_and_rows_check(tokenizer, teacher, tmp_path: Path) -> None:  # noqa: F811
    rows = encode_pairs(tokenizer, PAIRS[:6])
    cache = build_cache(teacher, rows, tokenizer.pad_token_id, top_k=4, tau=2.0, batch_size=4)
    n_valid = sum(sum(x != -100 for x in r["labels"][1:]) for r in rows)
    assert cache.ids.shape == (n_valid, 4) and cache.entropy.shape == (n_valid,)
    assert int(cache.offsets[-1]) == n_valid and 0 < float(cache.coverage().min()) <= 1
    torch.testing.assert_close(cache.coverage() + cache.tail_logmass.exp(), torch.ones(n_valid))
    loaded = TeacherCache.load(cache.save(tmp_path / "c.safetensors"))
    assert loaded.vocab_size == len(tokenizer) and loaded.tau == 2.0 and loaded.top_k == 4
    torch.testing.assert_close(loaded.logprobs, cache.logprobs)
    attached = loaded.attach(rows)
    assert [r["cache_index"] for r in attached] == list(range(6))
    with pytest.raises(ValueError, match="other data"):
        loaded.attach(rows[::-1])
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(Exception):  # noqa: B017 - an empty file is not a cache
        TeacherCache.load(tmp_path / "x.safetensors")


@pytest.mark.parametrize("fused", [True, False])
def test_offline_trainer_matches_the_online_teacher(tokenizer, teacher, tmp_path: Path, fused: bool) -> None:  # noqa: F811
    """A full-vocabulary cache makes the offline trainer's loss the online one; a top-k cache trains."""
    rows = encode_pairs(tokenizer, PAIRS[:4])
    student = make_student(teacher, num_layers=2, init="layers")
    full = build_cache(teacher, rows, tokenizer.pad_token_id, top_k=len(tokenizer))
    args = _config(tmp_path, chunked=fused, divergence="jsd")
    online = EAKDTrainer(model=student, teacher=teacher, args=args)
    offline = EAKDTrainer(model=student, teacher=None, teacher_cache=full, args=args)
    batch = collate(full.attach(rows), tokenizer.pad_token_id)
    want = online.compute_loss(student, batch, num_items_in_batch=40)
    got = offline.compute_loss(student, batch, num_items_in_batch=40)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="either a teacher model or a teacher_cache"):
        EAKDTrainer(model=student, teacher=None, args=args)


def test_offline_trainer_trains(tokenizer, teacher, tmp_path: Path) -> None:  # noqa: F811
    from functools import partial

    rows = encode_pairs(tokenizer, PAIRS)
    cache = build_cache(teacher, rows, tokenizer.pad_token_id, top_k=8)
    student = make_student(teacher, num_layers=2, init="random")
    trainer = EAKDTrainer(
        model=student,
        teacher=None,
        teacher_cache=cache,
        args=_config(tmp_path),
        train_dataset=cache.attach(rows),
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
    )
    result = trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert math.isfinite(result.training_loss) and logs[-1]["loss"] < logs[0]["loss"]
    diag = read_csv(tmp_path / "out" / "diagnostics.csv")
    assert 0 < float(diag[0]["w_mean"]) <= math.log(len(tokenizer)) and float(diag[0]["h_t_q50"]) > 0


@pytest.mark.slow
def test_cache_and_demo_commands_on_a_local_teacher(tokenizer, teacher, tmp_path: Path, capsys) -> None:  # noqa: F811
    """`eakd llm cache` then `eakd llm train model.teacher_cache=...`, and the demo with --teacher-cache."""
    import json

    from eakd.cli import main as eakd_main
    from eakd.llm.cli import main

    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in PAIRS))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{teacher: {tmp_path / 'teacher'}, student_layers: 2}}\n"
        f"data: {{source: {data}, prompt_column: prompt, context_column: null, val_size: 1, test_size: 1,"
        " max_length: 32}\n"
        "eval: {max_new_tokens: 4, sampling_seeds: 1, every: 1}\n"
        f"train: {{output_dir: {tmp_path / 'run'}, max_steps: 2, per_device_train_batch_size: 4,"
        " use_cpu: true, warmup_steps: 0, logging_steps: 1, tau: 2.0}\n"
    )
    out = tmp_path / "cache.safetensors"
    assert main(["cache", str(config), "--top-k", "4", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["rows"] == 2 and summary["top_k"] == 4 and 0 < summary["exact_mass_mean"] <= 1
    assert main(["train", str(config), f"model.teacher_cache={out}"]) == 0
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["config"]["model"]["teacher_cache"] == str(out) and result["train_rows"] == 2
    capsys.readouterr()
    assert eakd_main(["llm", "train", str(config), f"model.teacher_cache={out}", "train.tau=3.0"]) == 2
    err = capsys.readouterr().err  # checked before any model is loaded
    assert "entropies at tau 2.0, the loss's policy uses tau 3.0" in err and err.count("\n") == 1
    demo = ["demo", "--config", str(config), "--steps", "2", "--warmup-steps", "0", "--warm-start-steps", "1"]
    demo += ["--methods", "kd", "ea-kd-tau1", "--teacher-cache", "--top-k", "4"]
    demo += ["--out", str(tmp_path / "demo")]
    assert main(demo) == 0
    printed = capsys.readouterr().out
    assert printed.count("(written):") == 2 and "| ea-kd-tau1, after 2 steps |" in printed  # a cache per tau
    assert (tmp_path / "demo" / "teacher_cache_tau1.safetensors").exists()
    assert main([*demo[:-7], "kd", "--teacher-cache", "--top-k", "4", "--out", str(tmp_path / "demo")]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert main([*demo[:-7], "kd", "--teacher-cache", "--top-k", "3", "--out", str(tmp_path / "demo")]) == 0
    assert "(written)" in capsys.readouterr().out  # another top_k: not reused


def test_nan_cached_log_probs_are_an_error() -> None:
    hidden, weight, _, labels, topk = _case(seed=5)
    bad = topk._replace(logprobs=topk.logprobs.clone().index_fill_(0, torch.tensor([2]), float("nan")))
    s = TokenLossSettings(weighting=None)
    with pytest.raises(
        ValueError, match="fkl loss from the student and teacher logits contains 1 non-finite"
    ):
        chunked_distill_loss(hidden, weight, labels, teacher_topk=bad, settings=s)
    with pytest.raises(
        ValueError, match="fkl loss from the student and teacher logits contains 1 non-finite"
    ):
        distill_loss_from_logits(hidden @ weight.t(), None, labels, s, teacher_topk=bad)


def _corrupt(tensors: dict, meta: dict, **changes: object) -> tuple[dict, dict]:
    """A copy of a cache file's tensors and metadata with ``changes`` (tensor names or metadata keys)."""
    tensors, meta = dict(tensors), dict(meta)
    for key, value in changes.items():
        if key in tensors:
            tensors[key] = value
        else:
            meta[key] = value
    return {k: v for k, v in tensors.items() if v is not None}, meta


def test_cache_files_are_checked_for_consistency(tokenizer, teacher, tmp_path: Path) -> None:  # noqa: F811
    """Hand-corrupted cache files (right format and fingerprint, wrong insides) are refused on loading."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    rows = encode_pairs(tokenizer, PAIRS[:4])
    good = build_cache(teacher, rows, tokenizer.pad_token_id, top_k=3, tau=2.0).save(
        tmp_path / "good.safetensors"
    )
    tensors = load_file(str(good))
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    m, v = tensors["ids"].shape[0], len(tokenizer)
    off = tensors["offsets"]
    cases = {
        "offsets must rise from 0": {"offsets": off.flip(0)},
        "offsets must rise from 0 to the token count": {"offsets": torch.cat([off[:-1], off[-1:] + 1])},
        rf"ids span \[0, {v}\], not within \[0, {v}\)": {
            "ids": tensors["ids"].index_fill(0, torch.tensor([0]), v)
        },
        r"ids span \[-1,": {"ids": tensors["ids"].index_fill(0, torch.tensor([1]), -1)},
        r"top_k 0 is not in \[1,": {"top_k": "0"},
        r"ids \(\d+, 3\) torch.int32 are not integer \(M, top_k=2\)": {"top_k": "2"},
        r"logprobs \(\d+, 2\) do not match ids": {"logprobs": tensors["logprobs"][:, :2].contiguous()},
        rf"entropy \({m - 1},\) is not \({m},\)": {"entropy": tensors["entropy"][1:].contiguous()},
        "logprobs holds 1 NaN": {
            "logprobs": tensors["logprobs"].index_fill(0, torch.tensor([0]), 0.0).clone()
        },
        "lacks 'tail_logmass'": {"tail_logmass": None},
        "temperature must be > 0": {"temperature": "0.0"},
    }
    cases["logprobs holds 1 NaN"]["logprobs"][0, 0] = float("nan")
    for message, changes in cases.items():
        t, md = _corrupt(tensors, meta, **changes)
        save_file(t, str(tmp_path / "bad.safetensors"), metadata=md)
        with pytest.raises(ValueError, match=message):
            TeacherCache.load(tmp_path / "bad.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        TeacherCache.load(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="is a directory, not a file"):
        TeacherCache.load(tmp_path)
    with pytest.raises(ValueError, match="is a directory; give a file path"):
        TeacherCache.load(good).save(tmp_path)
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match="top_k and batch_size must be >= 1"):
        build_cache(teacher, rows, tokenizer.pad_token_id, top_k=0)


def test_a_cache_is_written_only_over_an_eakd_cache(tmp_path: Path) -> None:
    """A user's file at the cache path is refused (and kept); an eakd cache of any format may be replaced."""
    from safetensors.torch import save_file

    from eakd.llm.cache_file import CACHE_FORMAT, replaceable_cache

    assert replaceable_cache(tmp_path / "new.safetensors") is None
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    foreign = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    for path in (notes, foreign):
        with pytest.raises(FileExistsError, match=f"{path.name} exists and is not an eakd teacher cache"):
            replaceable_cache(path)
    old = tmp_path / "old.safetensors"
    save_file({"ids": torch.zeros(1, 1, dtype=torch.int32)}, str(old), {"format": "eakd-teacher-cache-1"})
    assert replaceable_cache(old) == "eakd-teacher-cache-1" != CACHE_FORMAT
    topk = _case()[-1]
    cache = TeacherCache(
        topk.ids, topk.logprobs, topk.tail_logmass, topk.entropy, torch.tensor([0, topk.ids.shape[0]]),
        topk.vocab_size, topk.ids.shape[1], topk.temperature, topk.tau, "t", "f",
    )  # fmt: skip
    tail = torch.log1p(-topk.logprobs[:, :3].double().exp().sum(-1)).float()  # the mass beyond the top 3
    sampled = dataclasses.replace(cache, samples=2, tail_logmass=tail)  # top 3 exact, then 2 "drawn"
    for kind in (cache, sampled):  # neither kind is written over a user's file
        with pytest.raises(FileExistsError, match="not overwritten"):
            kind.save(notes)
    assert notes.read_text() == "my notes\n"
    assert TeacherCache.load(cache.save(old)).ids.equal(cache.ids)  # an older eakd cache is replaced
    assert TeacherCache.load(sampled.save(old)).samples == 2  # so is a cache of the other kind


def test_llm_cache_command_keeps_a_users_file(tmp_path: Path, capsys) -> None:
    """`eakd llm cache CONFIG --out notes.txt` refuses before any model is loaded; the file is unchanged."""
    from eakd.cli import main as eakd_main

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    config = tmp_path / "llm.yaml"
    config.write_text("model: {teacher: nosuch-org/nosuch-model}\n")
    assert eakd_main(["llm", "cache", str(config), "--out", str(notes)]) == 2
    err = capsys.readouterr().err
    assert f"{notes} exists and is not an eakd teacher cache; not overwritten" in err and err.count("\n") == 1
    assert notes.read_text() == "my notes\n"
