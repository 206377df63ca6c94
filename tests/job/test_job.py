"""The job layer: argument groups, the one check before loading, level records and their views, cards written once."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from hf_prune import PruneConfig
from hf_prune.accuracy import AccuracyReport
from hf_prune.errors import CalibrationError, OutputExistsError
from hf_prune.evaluation import PerplexityReport
from hf_prune.job import (DEFAULT_CALIBRATION, EVAL_FILE, DataArguments, DenseRecord, LevelRecord, ModelArguments,
                          OutputArguments, check_inputs, prune_and_push)
from hf_prune.job.record import accuracy_columns

from conftest import FAST, make_tiny_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("job_base"))


def test_prune_and_push_puts_every_keyword_in_one_group(monkeypatch):
    """Each keyword argument lands in exactly one field of the job's groups (none dropped, none doubled)."""
    import hf_prune.job.run as run

    jobs = []
    monkeypatch.setattr(run, "run_job", lambda job: jobs.append(job))
    names = [p.name for p in inspect.signature(prune_and_push).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "config"] + ["repo_id"]
    sentinels = {name: object() for name in names}
    prune_and_push(object(), **sentinels)
    groups = [jobs[0].model, jobs[0].data, jobs[0].evaluation, jobs[0].output, jobs[0].run]
    found = [getattr(g, f.name) for g in groups for f in dataclasses.fields(g)]
    assert sorted(id(v) for v in found if any(v is s for s in sentinels.values())) == sorted(map(id, sentinels.values()))
    assert jobs[0].evaluation.seq_len is sentinels["eval_seq_len"] and jobs[0].output.repo_id is sentinels["repo_id"]
    prune_and_push(object(), num_samples=7)
    assert jobs[1].data.calibration == DEFAULT_CALIBRATION and jobs[1].config.num_samples == 7


def test_check_inputs_checks_the_groups_given_in_one_order(base, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    missing = DataArguments(f"a={tmp_path / 'missing.jsonl'}")
    with pytest.raises(OutputExistsError):  # both wrong: the output folder comes first
        check_inputs(output=OutputArguments(full), data=missing)
    with pytest.raises(CalibrationError, match="does not exist"):  # no output group: its folder is not looked at
        check_inputs(data=missing)
    checked = check_inputs(model=ModelArguments(str(base["base"])), data=DataArguments(base["calibration"]),
                           output=OutputArguments(tmp_path / "new", primary="sparsity-40"),
                           config=PruneConfig(target_sparsity=(0.2, 0.4)))
    assert checked.primary == 0.4 and checked.out == tmp_path / "new" and checked.repo_id is None
    assert checked.source.local and checked.source.model_type == "qwen2"
    assert [s.name for s in checked.calibration.mix.sources] == ["a", "b"] and checked.evaluation is None
    assert not (tmp_path / "new").exists()


def _ppl(value: float) -> PerplexityReport:
    return PerplexityReport(per_domain={"a": value}, nll={"a": 1.0}, tokens={"a": 10}, windows={"a": 1}, seq_len=8,
                            stride=8)


def _acc(value: float) -> AccuracyReport:
    return AccuracyReport(per_task={"t": {"acc": value, "n": 4}}, sources={"t": {"local": True}})


@dataclasses.dataclass
class _Trained:
    tokens: int

    def to_dict(self):
        return {"tokens": self.tokens}


def test_the_views_of_a_level_say_the_same():
    dense = DenseRecord(1000, _ppl(10.0), _acc(0.6))
    plain = LevelRecord(0.3, 0.301, 0.25, 700, [], _ppl(12.0), _acc(0.5))
    healed = LevelRecord(0.5, 0.499, 0.5, 500, [], _ppl(20.0), _acc(0.4), _Trained(64), _ppl(15.0), _acc(0.45))
    for record in (plain, healed):
        metrics, evals = record.metrics(), record.eval_results("org/base", dense)
        assert evals["branch"] == metrics["branch"] == record.branch
        assert (evals["params_after"], evals["sparsity"], evals["pruned"]) == (metrics["params"], metrics["sparsity"],
                                                                              metrics["perplexity"])
        assert evals["params_before"] == dense.metrics()["params"] and evals["dense"] == dense.metrics()["perplexity"]
        assert evals["accuracy"]["pruned"] == metrics["accuracy"]
    assert "recovered" not in plain.metrics() and not {"recovered", "recovery"} & set(plain.eval_results("b", dense))
    assert healed.eval_results("b", dense)["recovered"] == healed.metrics()["recovered"]["perplexity"]
    assert healed.eval_results("b", dense)["accuracy"]["recovered"] == healed.metrics()["recovered"]["accuracy"]
    assert healed.own_accuracy is healed.recovered_accuracy and plain.own_accuracy is plain.accuracy
    metrics = {"dense": dense.metrics(), "levels": {0.5: healed.metrics(), 0.3: plain.metrics()}}
    assert [label for label, _ in accuracy_columns(metrics)] == ["dense", "sparsity-30", "sparsity-50",
                                                                 "sparsity-50 recovered"]
    assert accuracy_columns({"dense": {"params": 1}, "levels": {}}) == []


def test_cards_are_written_once_after_every_level_is_evaluated(base, tmp_path, monkeypatch):
    import hf_prune.evaluation as evaluation
    import hf_prune.hub.card as card

    events = []
    evaluate, write = evaluation.evaluate_perplexity, card.write_model_card
    monkeypatch.setattr(evaluation, "evaluate_perplexity",
                        lambda *a, **k: events.append(("evaluate", k["label"])) or evaluate(*a, **k))
    monkeypatch.setattr(card, "write_model_card", lambda folder, info, **k: events.append(("card", Path(folder).name))
                        or write(folder, info, **k))
    res = prune_and_push(base["base"], target_sparsity=(0.2, 0.4), calibration=base["calibration"],
                         evaluation=base["evaluation"], method="magnitude", output_dir=tmp_path / "out", **FAST)
    assert events == [("evaluate", "dense"), ("evaluate", "sparsity-20"), ("evaluate", "sparsity-40"),
                      ("card", "sparsity-20"), ("card", "sparsity-40")]
    for s, folder in res.folders.items():
        saved = json.loads((folder / EVAL_FILE).read_text())
        assert saved["params_after"] == res.metrics["levels"][s]["params"] and saved["pruned"]["per_domain"] == \
            res.metrics["levels"][s]["perplexity"]["per_domain"]
        text = (folder / "README.md").read_text()
        assert "sparsity-20" in text and "sparsity-40" in text  # each card names every level of the run
