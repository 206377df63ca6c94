"""The GPU benchmark (benchmarks/gpu) kept runnable between GPU runs: its ``--smoke`` mode on CPU, its plans, its
time budget and its refusal of unknown sections."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, tiny_qwen2

GPU_DIR = REPO_ROOT / "benchmarks" / "gpu"
for path in (GPU_DIR, GPU_DIR.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

#: Packages hf-prune depends on that the GPU image lacks: the benchmark must run without them.
ABSENT_ON_THE_GPU_IMAGE = ("datasets", "optimum", "gguf", "tenacity", "lm_eval")
# None in sys.modules: `import` raises ModuleNotFoundError and importlib.util.find_spec answers None, as for a
# package that is not installed (what transformers' availability checks ask).
_BLOCKER = f"import sys\nsys.modules.update(dict.fromkeys({ABSENT_ON_THE_GPU_IMAGE!r}))\n"


def _decoder_params(model) -> int:
    return sum(p.numel() for p in model.model.layers.parameters())


@pytest.mark.parametrize("level", [0.2, 0.3, 0.5])
def test_plans_remove_the_level_and_round_the_widths(level):
    from shapes import plan_like_gisp

    from hf_prune import apply_plan

    model = tiny_qwen2(intermediate_size=512, num_hidden_layers=6)
    dense = _decoder_params(model)
    exact = apply_plan(model, plan_like_gisp(model, level, 1))
    assert abs(1 - _decoder_params(exact) / dense - level) < 0.01  # counted from the sliced weights
    assert [l.self_attn.q_proj.out_features for l in exact.model.layers] == [64] * 6  # every head kept
    widths = [l.mlp.gate_proj.out_features for l in exact.model.layers]
    assert widths[0] > widths[-1]  # gisp's profile: deeper layers keep less
    for multiple in (64, 128):
        rounded = apply_plan(model, plan_like_gisp(model, level, multiple))
        assert all(l.mlp.gate_proj.out_features % multiple == 0 for l in rounded.model.layers)
    kv = apply_plan(model, plan_like_gisp(model, level, 1, drop_kv=True))
    assert [l.self_attn.k_proj.out_features // 8 for l in kv.model.layers] == [2, 1, 2, 1, 2, 1]  # head_dim 8
    assert abs(1 - _decoder_params(kv) / dense - level) < 0.01


def test_smoke_run_on_cpu_without_the_packages_the_gpu_image_lacks(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_BLOCKER)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHON": sys.executable}
    blocked = subprocess.run([sys.executable, "-c", "import datasets"], env=env, capture_output=True, text=True)
    assert "ModuleNotFoundError" in blocked.stderr  # the blocker works, so the run below proves the point
    proc = subprocess.run(["bash", str(GPU_DIR / "run.sh"), "--smoke", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "needs: " in proc.stdout and "found: " in proc.stdout
    results = json.loads((out / "results.json").read_text())
    from measure import SECTIONS

    assert results["errors"] == {} and results["skipped"] == {}
    assert list(results["sections"]) == [name for name, _, _ in SECTIONS]
    sections = results["sections"]

    import bench_scale

    import hf_prune
    from hf_prune import PruneConfig

    config = PruneConfig(num_samples=4, seq_len=32, batch_size=2, compensation_samples=4)
    plan = hf_prune.memory_plan(bench_scale.config_of("smoke", "bfloat16"), config, devices=[("cpu", None)])
    assert sections["scoring"]["round_1"]["planned_bytes"] == plan.stage_total("scoring, round 1")
    assert sections["compensation"]["planned_bytes"] == plan.stage_total("compensation")
    prefill = sections["prefill"]
    assert prefill["keep_all"]["removed"] == 0
    for name, row in prefill.items():
        multiple = int(name.split("/m")[1].split("/")[0]) if "/m" in name else 1
        assert all(w % multiple == 0 for w in row["mlp_widths"]), name
        for cell in row["settings"].values():
            assert cell["tok_s"] > 0 and cell["dense_tok_s"] > 0
            assert cell["flop_ratio"] == pytest.approx(1.0) if name == "keep_all" else cell["flop_ratio"] > 1.05
            assert cell["fraction_of_limit"] == pytest.approx(cell["speedup"] / cell["flop_ratio"])
    assert prefill["50%/m1"]["removed"] == pytest.approx(0.5, abs=0.01)
    assert min(prefill["50%/m1/kv"]["kv_heads"]) < max(prefill["50%/m1/kv"]["kv_heads"])
    assert set(sections["decode"]["batches"]) == {"1", "2"}
    assert sections["recovery"]["tokens_per_second"]["kd"] > 0 and sections["recovery"]["tokens_per_second"]["lm"] > 0
    assert (out / "results.md").read_text().startswith("Device: CPU")


def test_budget_guard_skips_and_records(tmp_path):
    import gpu_bench

    threads = torch.get_num_threads()
    try:
        results = gpu_bench.main(["--smoke", "--budget-s", "0", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the smoke mode runs on one thread
    from measure import SECTIONS

    assert set(results["skipped"]) == {name for name, _, _ in SECTIONS}
    assert results["sections"] == {}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["skipped"] == results["skipped"] and "time budget" in saved["skipped"]["scoring"]


def test_unknown_section_is_refused_in_one_line():
    import gpu_bench

    with pytest.raises(SystemExit, match=r"^gpu_bench: unknown section\(s\) speed; choose from scoring, ") as exc:
        gpu_bench.chosen_sections("prefill,speed")
    assert "\n" not in str(exc.value)
    assert gpu_bench.chosen_sections("decode,prefill") == ["decode", "prefill"]


@pytest.mark.parametrize("absent", ["transformers", "accelerate"])
def test_a_missing_package_stops_it_in_one_line_before_any_work(tmp_path, absent):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(f"import sys\nsys.modules[{absent!r}] = None\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(GPU_DIR / "gpu_bench.py"), "--smoke", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert proc.stderr.startswith(f"gpu_bench: {absent} cannot be imported")
    assert proc.stdout.startswith("needs: ") and "found: " not in proc.stdout
    assert not (tmp_path / "out" / "results.json").exists()


def test_wheels_folder_without_wheels_is_refused(tmp_path):
    proc = subprocess.run(["bash", str(GPU_DIR / "run.sh"), "--wheels", str(tmp_path), "--smoke", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"run.sh: no .whl files in {tmp_path}"


@pytest.mark.parametrize("gpu, card", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("Some Card", "some-card")])
def test_card_name_names_the_results_file(gpu, card):
    import gpu_bench

    assert gpu_bench.card_name(gpu) == card
