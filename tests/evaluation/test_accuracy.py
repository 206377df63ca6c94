"""Zero-shot accuracy through lm-eval: a tiny random model on generated local tasks, against a direct computation."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, tiny_qwen2
from hf_prune.data.multiple_choice import IGNORE_INDEX, score_choices
from hf_prune.errors import CalibrationError, EvaluationError

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'hf-prune[eval]')")

from hf_prune.accuracy import evaluate_tasks, prepare_tasks, resolve_task_specs  # noqa: E402

WORDS = ("river stone cloud bright quiet market window garden silver engine paper winter music yellow "
         "forest number ocean basket candle morning planet letter mirror thunder").split()


def _text(seed: int, n: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer trained here on generated text (no download, no asset)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_text(i, 40) for i in range(50)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_qwen2(seed=3, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=1)


def _records(n: int, seed: int = 0) -> list[dict]:
    """Questions whose choices differ in length (so acc_norm can differ from acc); answers as index, text, letter."""
    out = []
    for i in range(n):
        choices = [_text(seed * 1000 + i * 10 + k, 1 + (i + k) % 4) for k in range(4)]
        answer = [i % 4, choices[(i + 1) % 4], "ABCD"[(i + 2) % 4]][i % 3]
        out.append({"prompt": _text(seed * 1000 + i, 6 + i % 5), "choices": choices, "answer": answer})
    return out


def _answer_index(rec: dict) -> int:
    a = rec["answer"]
    if isinstance(a, int):
        return a
    return rec["choices"].index(a) if a in rec["choices"] else "ABCD".index(a)


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _direct(model, tokenizer, records: list[dict]) -> tuple[list[float], list[float]]:
    """Per question, 1.0 if the highest-scoring choice is the answer (acc) and the same after dividing each score by
    the choice's length in characters (acc_norm), as lm-eval defines them: the continuation is " " + choice, its
    tokens are those of prompt + continuation after the prompt's tokens, and the score is their summed
    log-probability (computed here with score_choices on one unpadded sequence per choice)."""
    acc, acc_norm = [], []
    for rec in records:
        context = tokenizer(rec["prompt"])["input_ids"]
        scores = []
        for choice in rec["choices"]:
            whole = tokenizer(rec["prompt"] + " " + choice)["input_ids"]
            assert whole[: len(context)] == context
            ids = torch.tensor([whole])
            labels = torch.tensor([[IGNORE_INDEX] * len(context) + whole[len(context):]])
            with torch.no_grad():
                scores.append(float(score_choices(model(input_ids=ids).logits, labels)[0]))
        gold = _answer_index(rec)
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))  # argmax: the first of equal scores
        norm = [s / len(c) for s, c in zip(scores, rec["choices"])]
        best_norm = max(range(len(norm)), key=lambda k: (norm[k], -k))
        acc.append(float(best == gold))
        acc_norm.append(float(best_norm == gold))
    return acc, acc_norm


def test_local_task_matches_direct_computation(model, tokenizer, tmp_path) -> None:
    records = _records(24)
    path = _write(tmp_path / "tiny_mc.jsonl", records)
    report = evaluate_tasks(model, tokenizer, str(path), batch_size=5)
    acc, acc_norm = _direct(model, tokenizer, records)
    got = report.per_task["tiny_mc"]
    assert got["n"] == len(records)
    assert got["acc"] == pytest.approx(statistics.mean(acc), abs=1e-9)
    assert got["acc_norm"] == pytest.approx(statistics.mean(acc_norm), abs=1e-9)
    assert got["acc_stderr"] == pytest.approx(statistics.stdev(acc) / math.sqrt(len(acc)), rel=1e-6)
    assert 0 < got["acc"] < 1 and got["acc"] != got["acc_norm"]  # the check would be weak otherwise
    assert report.mean == got["acc"]
    assert "| tiny_mc | 24 |" in report.to_markdown()


def test_mean_stderr_treats_tasks_as_independent_samples() -> None:
    from hf_prune.accuracy import AccuracyReport

    one = AccuracyReport.from_dict({"a": {"acc": 0.5, "acc_stderr": 0.04, "n": 100}})
    assert one.mean_stderr == pytest.approx(0.04)
    # the mean of four independent estimates with the same error s has error s / sqrt(4)
    four = AccuracyReport.from_dict({t: {"acc": 0.5, "acc_stderr": 0.04, "n": 100} for t in "abcd"})
    assert four.mean_stderr == pytest.approx(0.02)
    assert "| **0.5000** | 0.0200 |" in four.to_markdown()
    missing = AccuracyReport.from_dict({"a": {"acc": 0.5, "acc_stderr": 0.04, "n": 100}, "b": {"acc": 0.5, "n": 3}})
    assert missing.mean_stderr is None


def test_shared_prompt_path_equals_lm_eval_hflm_on_a_task(model, tokenizer, tmp_path) -> None:
    """The default path and lm-eval's own HFLM (full_logits=True) give the same metrics on the same task."""
    path = _write(tmp_path / "tiny_mc.jsonl", _records(24))
    fast = evaluate_tasks(model, tokenizer, str(path), batch_size=6).per_task["tiny_mc"]
    reference = evaluate_tasks(model, tokenizer, str(path), batch_size=6, full_logits=True).per_task["tiny_mc"]
    assert fast == reference
    assert 0 < fast["acc"] < 1 and fast["acc"] != fast["acc_norm"]


# ---- the prompt-sharing harness against HFLM, request by request ----------------------------------------------
# Layer 0 without attention (its cache slot is missing: the cache holds layers 1-3 only), layer 2 with one KV group.
ATTENTION_FREE_PLAN = {"layers": [{"query_heads": []}, {}, {"query_heads": [0, 3]}, {"query_heads": [1, 2, 6, 7]}]}


def _greedy(model, ids: list[int], steps: int) -> list[int]:
    """The model's own greedy continuation of ``ids`` (uncached), so that is_greedy is true somewhere."""
    out = list(ids)
    for _ in range(steps):
        with torch.no_grad():
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def _requests(model, vocab: int) -> list[tuple[tuple[str, str], list[int], list[int]]]:
    """Contexts of 1-40 tokens with 1-9 choices each of 1-7 tokens, a group larger than a batch, one-token-only
    groups (no choice pass), greedy continuations, a context shared by two groups, and a pair longer than the
    model's window (HFLM's loop takes it)."""
    g = torch.Generator().manual_seed(11)

    def tokens(n: int) -> list[int]:
        return torch.randint(2, vocab, (n,), generator=g).tolist()

    out = []
    for k, (n_ctx, n_choices) in enumerate([(12, 4), (1, 3), (40, 2), (7, 9), (25, 4), (3, 1), (18, 5), (9, 4)]):
        context = tokens(n_ctx)
        lengths = [1] * n_choices if k in (1, 5) else [1 + (k + c) % 7 for c in range(n_choices)]
        choices = [tokens(n) for n in lengths]
        if k in (0, 4):
            choices[1] = _greedy(model, context, 3)
            choices[2] = _greedy(model, context, 1)
        out += [((f"ctx{k}", f"choice{c}"), context, choice) for c, choice in enumerate(choices)]
    out.append((("ctx0 again", "x"), out[0][1], tokens(2)))
    out.append((("too long", "y"), tokens(model.config.max_position_embeddings), tokens(3)))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pruned", [False, True], ids=["stock", "attention_free_layer"])
def test_prompt_sharing_lm_matches_hflm_request_by_request(family, tokenizer, pruned, attn) -> None:
    from lm_eval.models.huggingface import HFLM

    from conftest import tiny_causal_lm
    from hf_prune import PruningPlan, apply_plan
    from hf_prune.harness import PromptSharingLM

    lm = tiny_causal_lm(family, seed=3, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=1)
    lm = apply_plan(lm, PruningPlan.from_dict(ATTENTION_FREE_PLAN)) if pruned else lm
    lm.set_attn_implementation(attn)
    requests = _requests(lm, len(tokenizer))
    head_rows, body_rows = [], []
    lm.lm_head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[:-1].numel()))
    lm.model.embed_tokens.register_forward_hook(lambda m, args, out: body_rows.append(args[0].numel()))

    reference = HFLM(pretrained=lm, tokenizer=tokenizer, backend="causal", batch_size=8)._loglikelihood_tokens(requests)
    ref_head, ref_body = sum(head_rows), sum(body_rows)
    head_rows.clear(), body_rows.clear()
    got = PromptSharingLM(pretrained=lm, tokenizer=tokenizer, backend="causal",
                          batch_size=8)._loglikelihood_tokens(requests)

    assert [flag for _, flag in got] == [flag for _, flag in reference]
    assert any(flag for _, flag in reference)  # the greedy continuations
    torch.testing.assert_close(torch.tensor([ll for ll, _ in got]), torch.tensor([ll for ll, _ in reference]),
                               rtol=1e-5, atol=1e-4)
    # Every context once (not once per choice); the vocabulary head mostly on answer tokens.
    assert sum(body_rows) < 0.6 * ref_body and sum(head_rows) < 0.4 * ref_head


def test_a_choice_does_not_see_another_choice_of_its_question(tokenizer) -> None:
    """Choices are scored on copies of their context's cache: a choice scores the same alone as among others."""
    from hf_prune.harness import PromptSharingLM

    lm = tiny_qwen2(seed=8, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=1)
    harness = PromptSharingLM(pretrained=lm, tokenizer=tokenizer, backend="causal", batch_size=8)
    context = list(range(20, 35))
    choices = [[40, 41, 42, 43], [50, 51], [60, 61, 62, 63, 64, 65], [70]]
    together = harness._loglikelihood_tokens([(("c", str(k)), context, c) for k, c in enumerate(choices)])
    for k, choice in enumerate(choices):
        alone = harness._loglikelihood_tokens([(("c", str(k)), context, choice)])
        assert alone[0][0] == pytest.approx(together[k][0], abs=1e-4)
    assert len({round(ll, 3) for ll, _ in together}) == len(choices)


def test_context_field_folder_and_limit(model, tokenizer, tmp_path) -> None:
    folder = tmp_path / "suite"
    folder.mkdir()
    a, b = _records(10, seed=1), _records(7, seed=2)
    _write(folder / "alpha.jsonl", [{"context": r["prompt"], **{k: r[k] for k in ("choices", "answer")}} for r in a])
    _write(folder / "beta.jsonl", b)
    report = evaluate_tasks(model, tokenizer, [folder], limit=5, batch_size=3)
    assert list(report.per_task) == ["alpha", "beta"]
    for name, records in (("alpha", a), ("beta", b)):
        acc, _ = _direct(model, tokenizer, records[:5])
        assert report.per_task[name]["n"] == 5
        assert report.per_task[name]["acc"] == pytest.approx(statistics.mean(acc), abs=1e-9)
    out = tmp_path / "out.json"
    report.to_json(out)
    assert json.loads(out.read_text())["beta"]["n"] == 5


def test_bad_specs_fail_before_model(tmp_path) -> None:
    with pytest.raises(EvaluationError, match="does not exist"):
        resolve_task_specs(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no multiple-choice"):
        resolve_task_specs(str(tmp_path / "empty"))
    _write(tmp_path / "x.jsonl", _records(2))
    with pytest.raises(EvaluationError, match="two tasks"):
        resolve_task_specs([tmp_path / "x.jsonl", str(tmp_path / "x.jsonl")])
    _write(tmp_path / "bad.jsonl", [{"prompt": "p", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(CalibrationError, match="out of range"):
        prepare_tasks(str(tmp_path / "bad.jsonl"))
    with pytest.raises(EvaluationError, match="not an lm-eval task name"):
        prepare_tasks("surely_no_such_task_xyz")


def test_missing_lm_eval_names_the_extra(monkeypatch, tmp_path) -> None:
    _write(tmp_path / "x.jsonl", _records(2))
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval then raises ImportError
    with pytest.raises(EvaluationError, match=r"pip install 'hf-prune\[eval\]'"):
        prepare_tasks(str(tmp_path / "x.jsonl"))


# ---- the command line and prune_and_push ----------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(REPO_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("HF_PRUNE_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from conftest import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("acc_base"))


def _folder_model(folder: Path):
    import hf_prune  # noqa: F401 - registers pruned_qwen2
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    return AutoModelForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


def test_standard_task_offline_fails_clearly_and_writes_nothing(base, tmp_path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "hf_prune.cli", "evaluate", str(base["base"]), "--tasks", "arc_easy",
                           "--json", str(out), "-q"], capture_output=True, text=True, timeout=300, env=_env(),
                          cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert last.startswith("hf-prune: error: task 'arc_easy' needs its dataset from the Hugging Face Hub")
    assert "local copies" in last and "dataset_path: json" in last
    assert not any(tmp_path.iterdir())  # nothing written


def test_evaluate_command_writes_per_task_json(base, tmp_path, capsys) -> None:
    from hf_prune.cli import main

    records = _records(12, seed=5)
    task = _write(tmp_path / "mc_cli.jsonl", records)
    out = tmp_path / "acc.json"
    assert main(["evaluate", str(base["base"]), "--tasks", str(task), "--json", str(out), "--batch-size", "4",
                 "-q"]) == 0
    assert "| mc_cli | 12 |" in capsys.readouterr().out
    data = json.loads(out.read_text())
    model, tokenizer = _folder_model(base["base"])
    acc, acc_norm = _direct(model, tokenizer, records)
    assert set(data) == {"mc_cli"} and data["mc_cli"]["n"] == 12
    assert data["mc_cli"]["acc"] == pytest.approx(statistics.mean(acc), abs=1e-9)
    assert data["mc_cli"]["acc_norm"] == pytest.approx(statistics.mean(acc_norm), abs=1e-9)
    assert {"acc", "acc_stderr", "n", "acc_norm"} <= set(data["mc_cli"])


def test_prune_and_push_evaluates_accuracy_of_dense_and_levels(base, tmp_path) -> None:
    from huggingface_hub import ModelCard

    from hf_prune import prune_and_push
    from hf_prune.hub.card import check_card_metadata

    records = _records(16, seed=7)
    task = _write(tmp_path / "mc_run.jsonl", records)
    res = prune_and_push(base["base"], target_sparsity=(0.2, 0.4), calibration=base["calibration"],
                         method="magnitude", eval_tasks=[task], output_dir=tmp_path / "out", num_samples=8,
                         seq_len=32, steps=1, show_progress=False)
    dense_acc, _ = _direct(*_folder_model(base["base"]), records)
    assert res.metrics["dense"]["accuracy"]["mc_run"]["acc"] == pytest.approx(statistics.mean(dense_acc), abs=1e-9)
    for s, folder in res.folders.items():
        level_acc, _ = _direct(*_folder_model(folder), records)  # the saved level, reloaded
        evaluation = json.loads((folder / "eval_results.json").read_text())
        assert evaluation["accuracy"]["pruned"]["mc_run"]["acc"] == pytest.approx(statistics.mean(level_acc), abs=1e-9)
        assert evaluation["accuracy"]["dense"] == res.metrics["dense"]["accuracy"]
        card = (folder / "README.md").read_text()
        check_card_metadata(card)
        # Every card shows dense and every level, whichever was saved first.
        assert "| task | dense | " in card and "sparsity-20" in card and "| mc_run | " in card
        results = ModelCard(card).data.eval_results
        assert [(r.dataset_name, r.metric_type) for r in results] == [("mc_run", "acc"), ("mc_run", "acc_norm")]
        assert results[0].metric_value == pytest.approx(evaluation["accuracy"]["pruned"]["mc_run"]["acc"], abs=1e-6)
    table = res.accuracy_table()
    assert table.splitlines()[0] == "| task | dense | sparsity-20 | sparsity-40 |"


# ---- the local suite builder ----------------------------------------------------------------------------------
def test_zero_shot_suite_is_deterministic_and_well_formed(tmp_path) -> None:
    """Built from generated documents (the tests never read ../shared): every question's true continuation follows
    its prompt in one document, the wrong ones come from other documents, answers are spread, reruns are equal."""
    from hf_prune.data.multiple_choice import load_multiple_choice
    from hf_prune.data.zero_shot import build_zero_shot_suite

    dev = tmp_path / "corpus" / "dev"
    dev.mkdir(parents=True)
    docs = [f"Document {d}. " + _text(100 + d, 400) for d in range(6)]
    _write(dev / "prose.jsonl", [{"text": t} for t in docs])
    math = [{"text": f"Question: {a} apples and {b} more?\nAnswer: {a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in ((3, 4), (10, 25), (7, 8), (12, 30))]
    _write(dev / "math.jsonl", math)
    first = build_zero_shot_suite(tmp_path / "corpus", tmp_path / "a", max_records=50)
    again = build_zero_shot_suite(tmp_path / "corpus", tmp_path / "b", max_records=50)
    assert set(first) == {"nextpassage_prose", "nextpassage_math", "math_answer"}
    for name in first:
        assert first[name].read_bytes() == again[name].read_bytes()
    rows = [json.loads(line) for line in first["nextpassage_prose"].read_text().splitlines()]
    assert len(load_multiple_choice(first["nextpassage_prose"])) == len(rows) > 10
    for row in rows:
        true = row["choices"][row["answer"]]
        home = [d for d in docs if row["prompt"] in d]
        assert len(home) == 1 and true in home[0][home[0].index(row["prompt"]) :]
        for k, wrong in enumerate(row["choices"]):
            if k != row["answer"]:
                assert wrong not in home[0]  # from another document
    assert len({row["answer"] for row in rows}) > 1  # not always the same position
    answers = [json.loads(line) for line in first["math_answer"].read_text().splitlines()]
    for row, src in zip(answers, math):
        assert row["prompt"].endswith("####") and row["choices"][row["answer"]] == src["text"].rsplit(" ", 1)[-1]
        assert len(set(row["choices"])) == 4
