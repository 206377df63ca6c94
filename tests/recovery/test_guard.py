"""The held-back guard: windows kept out of training, measured before and during it; the best state is returned,
never one worse on them than the input; early stop; resume; what the card and eval_results.json show."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import TrainerCallback

from hf_prune.recovery import recover
from hf_prune.recovery.config import RecoveryConfig
from hf_prune.recovery.data import RecoveryWindows, recovery_windows
from hf_prune.recovery.guard import held_back_loss
from hf_prune.data.windows import CalibrationWindows
from test_recovery import SEQ, _Interrupt, _options, _pair, _StopAt, _tokens
from test_recovery import one_thread  # noqa: F401 (autouse: one thread)


@torch.no_grad()
def _ce(model, ids) -> float:
    """Mean next-token cross-entropy over all tokens of ``ids``, computed here in double precision."""
    logits = model(input_ids=ids).logits[:, :-1].double()
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))


def _windows(train: torch.Tensor, held: torch.Tensor) -> RecoveryWindows:
    return RecoveryWindows(CalibrationWindows(train, ["t"] * len(train)), CalibrationWindows(held, ["h"] * len(held)))


def _rows(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in t.tolist()}


def test_held_back_windows_are_disjoint_from_training_and_cover_every_domain(tmp_path, monkeypatch):
    from conftest import make_tiny_base

    from hf_prune import CalibrationMix
    from hf_prune.loading import load_tokenizer

    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_base(tmp_path / "base")
    tokenizer = load_tokenizer(str(base["base"]))
    mix = CalibrationMix.parse(base["calibration"])  # two domains, weight 0.5 each
    # a budget larger than the mix: training repeats windows, still none of the held-back ones
    config = RecoveryConfig(tokens=4000 * 16, seq_len=16, batch_size=4, held_back=7)
    windows = recovery_windows(mix, tokenizer, config)
    held = windows.held_back
    assert held.domain_counts == {"a": 4, "b": 3}  # split by weight
    assert recovery_windows(mix, tokenizer, config.replace(held_back=1)).held_back.domain_counts == {"a": 1, "b": 1}
    for domain in ("a", "b"):
        assert not _rows(held.by_domain()[domain]) & _rows(windows.train.by_domain()[domain])
    assert len(windows.train) == config.num_windows and len(torch.unique(windows.train.input_ids, dim=0)) < len(
        windows.train)
    again = recovery_windows(mix, tokenizer, config)  # deterministic
    assert torch.equal(again.held_back.input_ids, held.input_ids) and torch.equal(again.train.input_ids,
                                                                                  windows.train.input_ids)
    assert recovery_windows(mix, tokenizer, config.replace(held_back=0)).held_back is None


class _Perturb(TrainerCallback):
    """After step ``step``, multiplies every trained weight by ``factor``: the held-back loss jumps and stays up."""

    def __init__(self, step: int, factor: float = -20.0):
        self.step, self.factor = step, factor

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.mul_(self.factor)


class _Snapshots(TrainerCallback):
    def __init__(self):
        self.weights = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {k: v.clone() for k, v in model.state_dict().items()}


def test_a_run_that_gets_worse_returns_its_best_step_and_stops_early():
    _, student = _pair()
    data = _tokens(64, seed=5)
    windows = _windows(data[:48].repeat(2, 1), data[48:])  # 12 steps of 8
    snapshots = _Snapshots()
    result = recover(student, None, None, None, _options(method="lm", tokens=96 * SEQ, held_back=16, eval_steps=1,
                                                         patience=2), windows=windows, show_progress=False,
                     callbacks=[snapshots, _Perturb(3)])
    h = result.held_back
    assert [s for s, _ in h.history] == [0, 1, 2, 3, 4, 5]  # stopped after 2 measurements without a new best
    assert h.stopped_early == 5 and result.steps == 5 and h.final_step == 5
    assert h.best_step == 3 and h.returned == "best" and h.best < h.before and h.final > h.best
    # the model returned holds step 3's weights, and its held-back loss (computed here) is the best reported
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, snapshots.weights[3][name], msg=name)
    assert _ce(student, data[48:]) == pytest.approx(h.best, rel=1e-5)
    assert _ce(student, data[48:]) == pytest.approx(min(v for _, v in h.history), rel=1e-5)


def test_a_run_that_never_helps_returns_the_input_unchanged_with_a_warning(caplog):
    _, student = _pair()
    data = _tokens(24, seed=5)
    held = data[16:]
    # trained on one repeated token: predicting it everywhere only hurts the held-back text
    windows = _windows(torch.full((16, SEQ), 7), held)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    input_loss = _ce(student, held)
    with caplog.at_level(logging.WARNING, logger="hf_prune.recovery.guard"):
        result = recover(student, None, None, None, _options(method="lm", tokens=16 * SEQ, held_back=8, patience=0,
                                                             learning_rate=0.05),
                         windows=windows, show_progress=False)
    h = result.held_back
    assert h.returned == "input" and h.best_step == 0 and h.best == h.before and h.final > h.before
    assert h.before == pytest.approx(input_loss, rel=1e-5) and result.steps == 2
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert "returned as it was given" in caplog.text


def test_held_back_loss_is_the_mean_cross_entropy_of_each_window():
    _, student = _pair()
    ids = _tokens(5, seed=3)
    per_window = held_back_loss(student, ids, batch_size=2)
    assert per_window.shape == (5,)
    for i in range(5):
        assert float(per_window[i]) == pytest.approx(_ce(student, ids[i:i + 1]), rel=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_an_interrupted_guarded_run_resumes_to_the_same_best_state(tmp_path, lora):
    data = _tokens(64, seed=5)
    windows = _windows(data[:48].repeat(2, 1)[:64], data[48:])  # 8 steps
    options = _options(method="lm", tokens=64 * SEQ, held_back=16, eval_steps=1, patience=0, save_steps=4, lora=lora,
                       lora_r=4)
    _, reference = _pair()
    expected = recover(reference, None, None, None, options, windows=windows, state_dir=tmp_path / "a",
                       show_progress=False, callbacks=[_Perturb(3)])
    assert expected.held_back.returned == "best" and expected.held_back.best_step <= 3

    _, student = _pair()
    with pytest.raises(_Interrupt):  # after the checkpoint of step 4: the best (step <= 3) comes from its files
        recover(student, None, None, None, options, windows=windows, state_dir=tmp_path / "b", show_progress=False,
                callbacks=[_Perturb(3), _StopAt(5)])
    _, fresh = _pair()
    result = recover(fresh, None, None, None, options, windows=windows, state_dir=tmp_path / "b", show_progress=False,
                     callbacks=[_Perturb(3)])
    assert result.resumed_from.endswith("checkpoint-4")
    got, want_report = result.held_back, expected.held_back
    assert (got.best_step, got.returned, got.final_step) == (want_report.best_step, "best", 8)
    assert [s for s, _ in got.history] == [s for s, _ in want_report.history] == list(range(9))
    assert [v for _, v in got.history] == pytest.approx([v for _, v in want_report.history], rel=1e-5)
    want = reference.state_dict()
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, want[name], atol=1e-6, rtol=1e-5, msg=name)


# ---- the pipeline ----------------------------------------------------------------------------------------
def test_prune_and_push_shows_the_held_back_losses_and_never_saves_a_worse_level(tmp_path, monkeypatch):
    from conftest import FAST, make_tiny_base

    from hf_prune import prune_and_push

    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_base(tmp_path / "base")
    # A learning rate far too high: every step hurts, so the guard must hand back the level as pruned.
    recovery = {"method": "kd", "tokens": 1024, "seq_len": 32, "batch_size": 8, "learning_rate": 0.05,
                "held_back": 8, "eval_steps": 1, "patience": 2}
    res = prune_and_push(base["base"], None, target_sparsity=0.3, calibration=base["calibration"],
                         evaluation=base["evaluation"], output_dir=tmp_path / "out", recovery=recovery, **FAST)
    folder = res.folders[0.3]
    evals = json.loads((folder / "eval_results.json").read_text())
    h = evals["recovery"]["held_back"]
    assert h["returned"] == "input" and h["best_step"] == 0 and h["final"] > h["before"] == h["best"]
    assert h["windows"] == 8 and h["domain_counts"] == {"a": 4, "b": 4} and set(h["per_domain"]) == {"a", "b"}
    assert h["stopped_early"] == 2 and evals["recovery"]["steps"] == 2
    assert evals["recovered"]["per_domain"] == evals["pruned"]["per_domain"]  # the saved model is the pruned one
    card = (folder / "README.md").read_text()
    assert f"{h['before']:.4f} before, {h['best']:.4f} best (step 0), {h['final']:.4f} final (step 2)" in card
    assert "no recovery step lowered the held-back loss" in card and "stopped early" in card


class _Stop(TrainerCallback):
    """Stops training after ``step`` (as a user's callback may), between two of the guard's measurements."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_a_run_stopped_by_another_callback_measures_its_last_step():
    _, student = _pair()
    data = _tokens(40, seed=5)
    result = recover(student, None, None, None, _options(method="lm", tokens=96 * SEQ, held_back=8, eval_steps=5,
                                                         patience=0), windows=_windows(data[:32], data[32:]),
                     show_progress=False, callbacks=[_Stop(3)])
    h = result.held_back
    assert result.steps == 3 and [s for s, _ in h.history] == [0, 3] and h.final_step == 3 and h.final is not None
    assert h.returned in ("final", "input")  # the step measured is one the guard could keep
    assert _ce(student, data[32:]) == pytest.approx(h.best, rel=1e-5)
