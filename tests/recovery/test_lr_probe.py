"""``learning_rate="auto"``: the probe trains every candidate from the same start, keeps the lowest held-back loss,
and the run then trains exactly as a run given that rate; too small a budget, or nothing held back, uses the
fixed default."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_prune.errors import RecoveryError
from hf_prune.job.save import recovery_description
from hf_prune.recovery import RecoveryResult, recover
from hf_prune.recovery.config import DEFAULT_LR, LEGACY_DEFAULT_LR, LR_CANDIDATES, RecoveryConfig
from hf_prune.recovery.probe import probe_config
from test_guard import _windows
from test_recovery import SEQ, _options, _pair, _tokens
from test_recovery import one_thread  # noqa: F401 (autouse: one thread)

#: 160 steps of 2 windows: 5% of them gives each of the 4 candidates 2 steps.
STEPS, BATCH = 160, 2


def _probing(**overrides) -> dict:
    return _options(**{"method": "lm", "tokens": STEPS * BATCH * SEQ, "batch_size": BATCH, "learning_rate": "auto",
                       "held_back": 8, "eval_steps": 40, "patience": 0, **overrides})


def test_the_probe_step_count_is_five_percent_of_the_budget_split_over_the_candidates():
    config = RecoveryConfig(**_probing())
    assert config.lr_probe_steps == int(0.05 * STEPS) // len(LR_CANDIDATES[False]) == 2
    assert config.lr_candidates == LR_CANDIDATES[False]
    assert config.replace(lora=True).lr_candidates == LR_CANDIDATES[True]
    assert config.replace(tokens=(STEPS - 1) * BATCH * SEQ).lr_probe_steps == 0  # 7 steps: under 2 per candidate
    assert config.replace(held_back=0).lr_probe_steps == 0 and config.replace(learning_rate=1e-4).lr_probe_steps == 0
    assert RecoveryConfig().learning_rate == "auto"
    # a config saved before "auto" existed said None for the fixed default, and still means it
    assert RecoveryConfig.from_dict({"learning_rate": None}).learning_rate == LEGACY_DEFAULT_LR[False] == 1e-4
    with pytest.raises(RecoveryError, match=r"learning_rate must be a number in \(0, 1\) \(e.g. 1e-4\) or 'auto'"):
        RecoveryConfig(learning_rate="fast")


def test_the_probe_keeps_the_rate_with_the_lowest_held_back_loss_and_trains_as_a_run_given_it():
    _, student = _pair()
    data = _tokens(40, seed=5)
    windows = _windows(data[:32].repeat(10, 1), data[32:])  # 320 training windows: 160 steps of 2
    start = copy.deepcopy(student)
    # Each candidate on its own: a run of the probe's options from the same start, measured by the guard at its end.
    config = RecoveryConfig(**_probing())
    expected = {}
    for lr in config.lr_candidates:
        alone = recover(copy.deepcopy(start), None, None, None, probe_config(config, lr).replace(eval_steps=None),
                        windows=windows, show_progress=False)
        expected[lr] = alone.held_back.final
    assert len(set(expected.values())) == len(expected)  # the candidates differ, so the choice means something

    result = recover(student, None, None, None, _probing(), windows=windows, show_progress=False)
    probe = result.lr_probe
    assert probe.steps == 2 and probe.tokens == 2 * BATCH * SEQ * len(expected)
    for lr, loss in expected.items():
        assert probe.losses[lr] == pytest.approx(loss, rel=1e-5)
    chosen = min(expected, key=expected.get)
    assert probe.chosen == chosen and result.config.learning_rate == chosen
    assert probe.before == pytest.approx(result.held_back.before, rel=1e-6)

    # the run itself starts again from the given weights: the same as a run told the chosen rate
    fixed = recover(copy.deepcopy(start), None, None, None, _probing(learning_rate=chosen), windows=windows,
                    show_progress=False)
    assert fixed.lr_probe is None and result.steps == fixed.steps == STEPS
    for (name, a), b in zip(student.state_dict().items(), fixed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert RecoveryResult.from_dict(result.to_dict()).lr_probe == probe
    card_line = recovery_description(result)["learning rate"]  # what the model card says
    assert card_line.startswith(f"{chosen:g} (cosine") and "chosen by a probe" in card_line


@pytest.mark.parametrize("overrides", [{"tokens": 16 * BATCH * SEQ}, {"held_back": 0}],
                         ids=["small budget", "no held back"])
def test_auto_without_room_to_probe_uses_the_fixed_default(overrides):
    _, student = _pair()
    data = _tokens(40, seed=5)
    windows = _windows(data[:32], data[32:])
    result = recover(student, None, None, None, _probing(**overrides), windows=windows, show_progress=False)
    assert result.lr_probe is None and result.config.learning_rate == DEFAULT_LR[False]
