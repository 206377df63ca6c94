"""Recovery (issue 12): RecoveryConfig checks, KD with the Trainer, LoRA merged back, resume, NaN stop, the pipeline."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import pruned_classes, tiny_causal_lm
from hf_prune import PruneConfig, PruningPlan, RecoveryConfig, apply_plan, prune_and_push
from hf_prune.errors import RecoveryDivergedError, RecoveryError
from hf_prune.recovery import recover, training_windows
from hf_prune.recovery.config import DEFAULT_LR, parse_tokens
from hf_prune.recovery.distill import kd_loss, local_loss
from transformers import TrainerCallback

SEQ = 32


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny runs are dominated by per-op overhead: one thread is faster and steady on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(seed: int = 0, family: str = "qwen2"):
    """(teacher, student): a tiny random model whose logits are far from uniform, and a random pruned copy."""
    teacher = tiny_causal_lm(family, seed, initializer_range=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    plan = PruningPlan.from_dict({"layers": [
        {"query_heads": [0, 2, 5, 7], "mlp_channels": sorted(torch.randperm(96, generator=g)[:48].tolist())}
        for _ in range(4)]})
    return teacher, apply_plan(teacher, plan)


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 128, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def _options(**overrides) -> dict:
    """Six steps of eight windows; no held-back set (the guard has its own tests), so every window trains."""
    return {"method": "kd", "tokens": 48 * SEQ, "seq_len": SEQ, "batch_size": 8, "learning_rate": 3e-3,
            "held_back": 0, **overrides}


@torch.no_grad()
def _kl(student, teacher, ids) -> float:
    """Mean per-token KL(teacher || student), computed here from the two models' softmaxes."""
    p = torch.softmax(teacher(input_ids=ids).logits.double(), -1)
    q = torch.softmax(student(input_ids=ids).logits.double(), -1)
    return float((p * (p.log() - q.log())).sum(-1).mean())


# ---- options ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, tokens", [(100_000, 100_000), ("100k", 100_000), ("2M", 2_000_000),
                                          ("62.5k", 62_500), ("1e5", 100_000), (" 250K ", 250_000)])
def test_token_budgets_parse(text, tokens):
    assert parse_tokens(text) == tokens
    assert RecoveryConfig(tokens=text).tokens == tokens


@pytest.mark.parametrize("overrides, message", [
    ({"tokens": 0}, "tokens must be > 0"),
    ({"tokens": "-5k"}, "must be a number of tokens"),
    ({"tokens": "lots"}, "must be a number of tokens like 100000"),
    ({"tokens": "0.5"}, "whole number"),
    ({"tokens": True}, "must be a number of tokens"),
    ({"method": "sft"}, "Unknown recovery method 'sft'"),
    ({"learning_rate": 0}, r"learning_rate must be a number in \(0, 1\)"),
    ({"learning_rate": 3.0}, r"learning_rate must be a number in \(0, 1\)"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"lr_scheduler": "cubic"}, "Unknown recovery lr_scheduler 'cubic'"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"seq_len": 1}, "seq_len must be an integer >= 2"),
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"lm_weight": 1.5}, r"lm_weight must be a number in \[0, 1\]"),
    ({"warmup": 1}, r"warmup must be a number in \[0, 1\)"),
    ({"save_steps": -1}, "save_steps must be an integer >= 0"),
    ({"kd_top_k": -1}, "kd_top_k must be an integer >= 0"),
    ({"held_back": 2.5}, "held_back must be an integer >= 0"),
    ({"eval_steps": 0}, "eval_steps must be a positive integer"),
    ({"patience": -1}, "patience must be an integer >= 0"),
])
def test_bad_options_are_refused_at_construction(overrides, message):
    with pytest.raises(RecoveryError, match=message):
        RecoveryConfig(**overrides)
    with pytest.raises(RecoveryError, match=message):  # the same through PruneConfig's dict form
        PruneConfig(recovery={"method": "kd", **overrides})
    with pytest.raises(RecoveryError, match="unknown recovery option"):
        PruneConfig(recovery={"tokenz": 5})


def test_prune_config_holds_recovery_as_dict_or_object(tmp_path):
    config = PruneConfig(target_sparsity=0.3, recovery={"method": "kd", "tokens": "100k", "lora": True})
    assert config.recovery == RecoveryConfig(tokens=100_000, lora=True)
    assert PruneConfig(recovery="lm").recovery == RecoveryConfig(method="lm")
    assert PruneConfig(recovery="none").recovery is None
    assert PruneConfig.load(config.save(tmp_path)) == config  # prune_config.json keeps it
    assert json.loads((tmp_path / "prune_config.json").read_text())["recovery"]["tokens"] == 100_000
    # Recovery changes no plan: a pruning run's state stays valid when only the recovery options change.
    assert config.fingerprint() == PruneConfig(target_sparsity=0.3).fingerprint()
    # Budget arithmetic: whole optimizer steps, at least the budget.
    r = RecoveryConfig(tokens=1000, seq_len=64, batch_size=4, gradient_accumulation_steps=2)
    assert (r.max_steps, r.num_windows, r.tokens_used) == (2, 16, 1024)
    assert RecoveryConfig().lr == DEFAULT_LR[False] == 3e-5 and RecoveryConfig(lora=True).lr == DEFAULT_LR[True] == 1e-3


# ---- training --------------------------------------------------------------------------------------------
def test_kd_steps_lower_the_kl_to_the_teacher(family):
    teacher, student = _pair(family=family)
    held_out = _tokens(16, seed=99)
    before = _kl(student, teacher, held_out)
    dense_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    # the teacher run at every step over the full vocabulary (kd_top_k=0); the cached top-k: tests/recovery/test_kd.py
    result = recover(student, teacher, None, _tokens(48, seed=5), _options(kd_top_k=0), show_progress=False)
    after = _kl(student, teacher, held_out)
    assert result.model is student and type(student) is pruned_classes(family)[0] and not student.training
    assert after < 0.8 * before, (before, after)
    assert result.steps == 6 and result.tokens == 48 * SEQ and result.tokens_per_second > 0
    # kd_loss is the KL the test computes (T = 1), on the teacher's own logits it is zero
    with torch.no_grad():
        s, t = student(input_ids=held_out).logits, teacher(input_ids=held_out).logits
    assert float(kd_loss(s, t)) == pytest.approx(after, rel=1e-4)
    assert float(kd_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    # the teacher is untouched and in eval mode
    assert not teacher.training
    assert all(torch.equal(v, dense_weights[k]) for k, v in teacher.state_dict().items())


def test_bf16_autocast_and_activation_checkpointing_train_and_are_undone():
    teacher, student = _pair()
    held_out = _tokens(16, seed=99)
    before = _kl(student, teacher, held_out)
    recover(student, teacher, None, _tokens(48, seed=5), _options(bf16=True, gradient_checkpointing=True),
            show_progress=False)
    assert _kl(student, teacher, held_out) < 0.9 * before
    assert next(student.parameters()).dtype == torch.float32 and not student.is_activation_checkpointing


def test_lm_method_trains_without_a_teacher():
    _, student = _pair()
    data = _tokens(48, seed=5)
    ce = lambda: float(torch.nn.functional.cross_entropy(  # noqa: E731
        student(input_ids=data).logits[:, :-1].reshape(-1, 128), data[:, 1:].reshape(-1)))
    with torch.no_grad():
        before = ce()
    recover(student, None, None, data, _options(method="lm"), show_progress=False)
    with torch.no_grad():
        assert ce() < before
    with pytest.raises(RecoveryError, match="needs the dense teacher"):
        recover(student, None, None, data, _options(), show_progress=False)


def _layer_error(student, teacher, ids, layer: int) -> torch.Tensor:
    """Relative squared error of one layer's output, from the models' own ``output_hidden_states`` (not the last
    layer: its hidden state is taken after the final norm)."""
    s = student(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
    with torch.no_grad():
        t = teacher(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
    return (s - t).pow(2).mean() / t.pow(2).mean()


def test_local_loss_is_per_layer_and_its_gradient_stays_in_the_layer():
    teacher, student = _pair()
    ids = _tokens(4, seed=3)
    n = len(student.model.layers)
    with torch.no_grad():
        assert float(local_loss(teacher, teacher, ids)) == pytest.approx(0.0, abs=1e-10)
    # layer 0 sees the same input (the embeddings) in both models: its term is the error computed independently
    loss = local_loss(student, teacher, ids)
    loss.backward()
    got = [p.grad.clone() for p in student.model.layers[0].parameters()]
    student.zero_grad()
    (_layer_error(student, teacher, ids, 0) / n).backward()
    want = [p.grad for p in student.model.layers[0].parameters()]
    # later layers' terms send no gradient back into layer 0 (their inputs are detached), nor into the embeddings
    assert all(torch.allclose(g, w, rtol=1e-4, atol=1e-8) for g, w in zip(got, want))
    student.zero_grad()
    local_loss(student, teacher, ids).backward()
    assert student.model.embed_tokens.weight.grad is None and student.lm_head.weight.grad is None


def test_local_steps_lower_the_layer_errors_and_the_kl():
    teacher, student = _pair()
    held_out = _tokens(16, seed=99)
    with torch.no_grad():
        before, kl_before = float(local_loss(student, teacher, held_out)), _kl(student, teacher, held_out)
    lm_head = student.lm_head.weight.clone()
    recover(student, teacher, None, _tokens(48, seed=5), _options(method="local"), show_progress=False)
    with torch.no_grad():
        after, kl_after = float(local_loss(student, teacher, held_out)), _kl(student, teacher, held_out)
    assert after < 0.9 * before and kl_after < kl_before, (before, after, kl_before, kl_after)
    assert torch.equal(student.lm_head.weight, lm_head)  # only decoder layers train
    with pytest.raises(RecoveryError, match="needs the dense teacher"):
        recover(student, None, None, _tokens(8, seed=5), _options(method="local"), show_progress=False)


class _Capture(TrainerCallback):
    """Logits of the trained (PEFT-wrapped) model at the end of training, before the adapters are merged."""

    def __init__(self, ids):
        self.ids, self.logits, self.kind = ids, None, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.kind = type(model).__name__
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=self.ids).logits.clone()


def test_lora_is_merged_back_and_matches_the_unmerged_adapters(family):
    teacher, student = _pair(family=family)
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    held_out = _tokens(4, seed=99)
    with torch.no_grad():
        untrained = student(input_ids=held_out).logits.clone()
    capture = _Capture(held_out)
    result = recover(student, teacher, None, _tokens(32, seed=5), _options(lora=True, lora_r=4, tokens=32 * SEQ),
                     show_progress=False, callbacks=[capture])
    assert capture.kind == "PeftModelForCausalLM"
    merged = result.model
    assert type(merged) is pruned_classes(family)[0]
    assert {k: v.shape for k, v in merged.state_dict().items()} == shapes  # same dense checkpoint, no lora_ keys
    with torch.no_grad():
        logits = merged(input_ids=held_out).logits
    assert not torch.allclose(logits, untrained, atol=1e-3)  # the adapters did change the model
    torch.testing.assert_close(logits, capture.logits, atol=1e-4, rtol=1e-4)


class _Interrupt(Exception):
    pass


class _StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Interrupt(f"stopped at {self.step}")


@pytest.mark.parametrize("lora", [False, True])
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, lora):
    options = _options(save_steps=2, lora=lora, lora_r=4)
    data = _tokens(48, seed=5)
    teacher, reference = _pair()
    recover(reference, teacher, None, data, options, state_dir=tmp_path / "a", show_progress=False)

    _, student = _pair()
    with pytest.raises(_Interrupt):
        recover(student, teacher, None, data, options, state_dir=tmp_path / "b", show_progress=False,
                callbacks=[_StopAt(3)])
    _, fresh = _pair()  # a new process would start from the pruned weights again
    result = recover(fresh, teacher, None, data, options, state_dir=tmp_path / "b", show_progress=False)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-2")
    assert result.steps == 6 and [s for s, _ in result.losses] == [3, 4, 5, 6]
    expected = reference.state_dict()
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(RecoveryError, match=r"holds a recovery run with other options \(learning_rate\)"):
        recover(fresh, teacher, None, data, {**options, "learning_rate": 1e-3}, state_dir=tmp_path / "b",
                show_progress=False)


class _Poison(TrainerCallback):
    """Puts a NaN into a weight after step 2: the loss of step 3 is NaN."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2:
            with torch.no_grad():
                model.model.norm.weight[0] = float("nan")


def test_a_nan_loss_stops_with_the_step_named():
    teacher, student = _pair()
    with pytest.raises(RecoveryDivergedError, match=r"recovery loss became nan at step 3 of 6") as err:
        recover(student, teacher, None, _tokens(48, seed=5), _options(), show_progress=False, callbacks=[_Poison()])
    assert err.value.step == 3


# ---- data ------------------------------------------------------------------------------------------------
def test_training_windows_follow_the_mix_and_a_seed_of_their_own(tmp_path, monkeypatch):
    from hf_prune import CalibrationMix
    from hf_prune.loading import load_tokenizer
    from conftest import make_tiny_base

    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_base(tmp_path / "base")
    tokenizer = load_tokenizer(str(base["base"]))
    mix = CalibrationMix.parse(base["calibration"])  # two domains, weight 0.5 each
    config = RecoveryConfig(tokens=40 * 16, seq_len=16, batch_size=4)
    windows = training_windows(mix, tokenizer, config)
    assert windows.input_ids.shape == (40, 16) and windows.domain_counts == {"a": 20, "b": 20}
    assert windows.seed not in range(1000)  # not a scoring round's seed (PruneConfig.seed + round)
    scoring = mix.sample(tokenizer, 40, 16, seed=0)  # what a pruning run with seed 0 scores on first
    assert not torch.equal(windows.by_domain()["a"], scoring.by_domain()["a"])
    assert torch.equal(training_windows(mix, tokenizer, config).input_ids, windows.input_ids)  # deterministic
    assert not torch.equal(training_windows(mix, tokenizer, config.replace(seed=1)).input_ids, windows.input_ids)
    # A budget beyond what a domain holds: its windows are reused (another pass) when allowed, refused otherwise.
    big = config.replace(tokens=4000 * 16)
    repeated = training_windows(mix, tokenizer, big).by_domain()["a"]
    assert len(repeated) == 2000 and len(torch.unique(repeated, dim=0)) < 2000
    with pytest.raises(RecoveryError, match=r"domain 'a' gives \d+ windows but the recovery budget needs 2000"):
        training_windows(mix, tokenizer, big.replace(allow_repeat=False))


def test_bad_recovery_input_fails_before_the_model_is_loaded(tmp_path, monkeypatch):
    import importlib.util

    import hf_prune.job.levels as levels
    from conftest import make_tiny_base

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(levels, "load_model", no_loading)
    with pytest.raises(RecoveryError, match="tokens must be > 0"):  # before even the model folder is looked at
        prune_and_push("/no/such/model", None, recovery={"method": "kd", "tokens": 0}, output_dir=tmp_path / "o")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))
    with pytest.raises(RecoveryError, match=re.escape("needs PEFT: pip install 'hf-prune[lora]'")):
        prune_and_push("/no/such/model", None, recovery={"lora": True}, output_dir=tmp_path / "o")
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_base(tmp_path / "base")
    with pytest.raises(RecoveryError, match="without repeating"):  # needs the tokenizer, still not the model
        prune_and_push(base["base"], None, target_sparsity=0.3, calibration=base["calibration"],
                       output_dir=tmp_path / "o", recovery={"tokens": "10M", "allow_repeat": False, "held_back": 0})
    with pytest.raises(RecoveryError, match="domain 'a' gives 15 windows: too few to hold back 16"):
        prune_and_push(base["base"], None, target_sparsity=0.3, calibration=base["calibration"],
                       output_dir=tmp_path / "o", recovery={"held_back": 32})
    assert not (tmp_path / "o").exists()


# ---- the pipeline ----------------------------------------------------------------------------------------
def test_prune_and_push_recovers_each_level(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from hf_prune import CalibrationMix, evaluate_perplexity
    from hf_prune.loading import load_tokenizer
    from conftest import FAST, make_tiny_base

    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_base(tmp_path / "base")
    # No held-back set: the saved model is the trained one (the guard in the pipeline: tests/recovery/test_guard.py).
    recovery = {"method": "kd", "tokens": 2048, "seq_len": 32, "batch_size": 8, "learning_rate": 3e-3, "held_back": 0}
    res = prune_and_push(base["base"], None, target_sparsity=(0.2, 0.4), calibration=base["calibration"],
                         evaluation=base["evaluation"], output_dir=tmp_path / "out",
                         recovery=recovery, **FAST)
    assert res.metrics["recovery"] == RecoveryConfig(**recovery).to_dict()
    for s, folder in res.folders.items():
        evals = json.loads((folder / "eval_results.json").read_text())
        assert set(evals["recovered"]["per_domain"]) == set(evals["pruned"]["per_domain"]) == {"a", "b"}
        assert evals["recovered"]["per_domain"] != evals["pruned"]["per_domain"]  # the saved model was trained
        assert evals["recovery"]["tokens"] == 2048 and evals["recovery"]["steps"] == 8
        assert res.metrics["levels"][s]["recovered"]["perplexity"] == evals["recovered"]
        assert PruneConfig.load(folder).recovery == RecoveryConfig(**recovery)
        card = (folder / "README.md").read_text()
        assert "### Recovery" in card and "pruned + recovered" in card and "tokens used: 2,048" in card
        assert "distilled from the dense model" in card
        # What is saved is the recovered model: reloading it gives the recovered perplexity.
        model = AutoModelForCausalLM.from_pretrained(folder)
        report = evaluate_perplexity(model, load_tokenizer(str(folder)), CalibrationMix.parse(base["evaluation"]),
                                     seq_len=32, progress=False)
        assert report.mean == pytest.approx(evals["recovered"]["mean"], rel=1e-4)
    assert "recovered ppl" in res.summary() and "sparsity-20 recovered" in res.perplexity_table()


# ---- real weights ----------------------------------------------------------------------------------------
@pytest.mark.real
@pytest.mark.slow
def test_recovery_lowers_held_out_perplexity_of_smollm2(smollm2, tmp_path):
    """30% gisp (compensated) SmolLM2, then a small KD budget: held-out perplexity drops below the unrecovered one."""
    from hf_prune import CalibrationMix, evaluate_perplexity, prune
    from conftest import stdlib_corpus

    model, tokenizer = smollm2
    torch.set_num_threads(2)
    text = stdlib_corpus(tmp_path / "text")
    mix = CalibrationMix({d: str(p) for d, p in text["calib"].items()})
    evals = {d: str(p) for d, p in text["eval"].items()}
    result = prune(model, tokenizer, mix, 0.3, method="gisp", steps=1, num_samples=8, seq_len=64,
                   compensation_samples=8, show_progress=False)
    pruned = result.apply(model, 0.3, show_progress=False)

    def ppl(m):
        return evaluate_perplexity(m, tokenizer, evals, seq_len=128, max_windows_per_domain=2, progress=False).mean

    before = ppl(pruned)
    result = recover(pruned, model, tokenizer, mix, {"method": "kd", "tokens": 1024, "seq_len": 64, "batch_size": 8,
                                                     "learning_rate": 2e-4, "warmup": 0}, show_progress=False)
    after = ppl(pruned)
    print(f"SmolLM2 30%: held-out perplexity {before:.2f} -> {after:.2f} after {result.tokens} KD tokens "
          f"({result.tokens_per_second:.0f} student tok/s)")
    assert after < before, (before, after)
