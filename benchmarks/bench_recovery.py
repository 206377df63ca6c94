"""Recovery: dev perplexity of pruned levels against the number of training tokens, KD vs LM, full vs LoRA.

    python benchmarks/bench_recovery.py --model smollm2 --sparsities 0.3,0.5 --runs kd,lm,kd-lora --tokens 500k
    python benchmarks/bench_recovery.py --model qwen --sparsities 0.3 --runs kd --tokens 250k

Prunes once with gisp (its default compensation; ``--steps 5 --num-samples 32 --seq-len 128`` as in the README's
quality benchmark) on the equal-weight mix of ``../shared/corpus/calib`` (or ``$HF_PRUNE_CORPUS/calib``), then
recovers every level with every run configuration, from the level's own pruned weights, with windows drawn from
the same calibration mix (a seed of their own). The ``dev`` split is evaluated (8 windows x 128 tokens per domain)
at 0 tokens and at each ``--eval-at`` point of one run (a callback), so one run gives the whole curve; the learning
rate follows the schedule of the full ``--tokens`` budget. Student tokens/s are measured with evaluation time
excluded; the ``lm`` run is the plain LM training step of the student that ``kd`` is compared against.

Writes ``benchmarks/results/recovery_<model>.json`` (after every run) and a PNG of perplexity vs tokens beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
from common import DOMAINS, MODELS, ROOT, calib_file, corpus_dir, dev_files, finish_perplexity_plot, load_model
from transformers import TrainerCallback

from hf_prune import CalibrationMix, evaluate_perplexity, prune, recover
from hf_prune.fileio import cache_dir
from hf_prune.markdown import table as markdown_table
from hf_prune.recovery import RecoveryConfig, parse_tokens, recovery_windows, training_windows

#: Run configurations: name -> RecoveryConfig fields (``--lr`` / ``--lora-lr`` fill in the learning rate).
RUNS = {
    "kd": {"method": "kd"},
    "kd-full": {"method": "kd", "kd_top_k": 0},  # the teacher at every step: no teacher pass before training
    "lm": {"method": "lm"},
    "kd-lora": {"method": "kd", "lora": True},
    "kd+lm": {"method": "kd", "lm_weight": 0.5},
    "local": {"method": "local"},
}


class EvalAt(TrainerCallback):
    """Evaluates the model at the given optimizer steps and keeps the time it spent, so tokens/s can exclude it.

    ``save(points, tokens_per_second)`` is called after every evaluation (a run stopped part-way keeps its points);
    training stops after ``stop_step`` (the schedule stays that of the full budget).
    """

    def __init__(self, steps: dict[int, int], evaluate, save, stop_step: int, tokens_per_step: int) -> None:
        self.steps, self.evaluate, self.save = steps, evaluate, save
        self.stop_step, self.tokens_per_step = stop_step, tokens_per_step
        self.points: dict[int, dict] = {}
        self.eval_seconds = 0.0
        self.t0 = self.t1 = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0, self.first_step = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.t1 = time.perf_counter()
        if state.global_step in self.steps:
            t = time.perf_counter()
            model.eval()
            tokens = self.steps[state.global_step]
            self.points[tokens] = self.evaluate(model)
            model.train()
            self.eval_seconds += time.perf_counter() - t
            speed = self.tokens_per_second(state.global_step)
            print(f"    {tokens:>7} tokens: mean {self.points[tokens]['mean']:.2f} ({speed:.0f} student tok/s)",
                  flush=True)
            self.save(self.points, speed)
            self.t1 = time.perf_counter()
        if state.global_step >= self.stop_step:
            control.should_training_stop = True

    def tokens_per_second(self, steps: int) -> float:
        train_seconds = max(self.t1 - self.t0 - self.eval_seconds, 1e-9)
        return (steps - self.first_step) * self.tokens_per_step / train_seconds


def evaluator(tokenizer, evals, calibration, args):
    def evaluate(model) -> dict:
        report = evaluate_perplexity(model, tokenizer, evals, seq_len=args.eval_seq_len,
                                     max_windows_per_domain=args.eval_windows, batch_size=8, progress=False,
                                     calibration=calibration)
        return {"per_domain": report.per_domain, "mean": report.mean}

    return evaluate


def run_config(name: str, args, tokens) -> RecoveryConfig:
    """The RecoveryConfig of run type ``name`` (``TYPE`` or ``TYPE@LR``) with the benchmark's window, batch, seed and
    learning rates (``@LR`` overrides ``--lr`` / ``--lora-lr``; ``@auto`` is the learning-rate probe)."""
    kind, _, rate = name.partition("@")
    fields = {**RUNS[kind], "tokens": tokens, "seq_len": args.train_seq_len, "batch_size": args.batch_size,
              "seed": args.seed, "save_steps": 0}
    rate = rate or (args.lora_lr if fields.get("lora") else args.lr)
    fields["learning_rate"] = rate if rate == "auto" else float(rate)
    return RecoveryConfig(**fields)


class Levels:
    """The pruned (and compensated) levels: pruned once with gisp when first asked for, each level kept under
    ``--level-cache`` (``save_pretrained``) so a later call with the same settings loads it instead."""

    def __init__(self, model, tokenizer, calibration, sparsities, args) -> None:
        self.model, self.tokenizer, self.calibration, self.sparsities, self.args = (model, tokenizer, calibration,
                                                                                   sparsities, args)
        self.result, self.seconds = None, None

    def _path(self, s: float) -> Path | None:
        a = self.args
        key = f"{a.model}_gisp{a.steps}_{a.num_samples}x{a.seq_len}_seed{a.seed}_{s}"
        return Path(a.level_cache) / key if a.level_cache else None

    def build(self, s: float):
        path = self._path(s)
        if path is not None and (path / "config.json").is_file():
            from transformers import AutoModelForCausalLM

            print(f"  {s:.0%}: level loaded from {path}", flush=True)
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        if self.result is None:
            t0 = time.perf_counter()
            self.result = prune(self.model, self.tokenizer, self.calibration, self.sparsities, method="gisp",
                                steps=self.args.steps, num_samples=self.args.num_samples, seq_len=self.args.seq_len,
                                seed=self.args.seed, show_progress=False)
            self.seconds = round(time.perf_counter() - t0, 1)
        built = self.result.apply(self.model, s, show_progress=False)
        if path is not None:
            built.save_pretrained(path)
        return built


def run_one(model, pruned, tokenizer, calibration, name: str, args, evaluate, level0: dict, stop: int,
            save, teacher_cache=None) -> tuple[dict, object]:
    """One recovery run of one level (stopped after ``stop`` tokens): (its entry: the perplexity curve and student
    tokens/s; the run's teacher cache, for the next run on the same windows)."""
    config = run_config(name, args, args.tokens)
    per_step = config.tokens_per_step
    marks = {max(1, round(parse_tokens(t) / per_step)): 0 for t in args.eval_at.split(",") if t}
    stop_step = min(config.max_steps, max(1, round(stop / per_step)))
    marks = {step: step * per_step for step in marks if step <= stop_step}
    entry = {"config": config.to_dict(), "tokens_per_step": per_step, "stopped_at_step": stop_step,
             "curve": {"0": level0}}

    def save_partial(points: dict, speed: float) -> None:
        entry["curve"] = {str(k): v for k, v in sorted({0: level0, **points}.items())}
        entry["student_tokens_per_second"] = round(speed, 1)
        save(entry)

    callback = EvalAt(marks, evaluate, save_partial, stop_step, per_step)
    windows = recovery_windows(calibration, tokenizer, config)
    if config.learning_rate != "auto":  # the curves are the raw run's: no held-back guard (the probe needs it)
        windows = windows.train
    t = time.perf_counter()
    result = recover(pruned, model if config.needs_teacher else None, tokenizer, None, config, windows=windows,
                     show_progress=False, callbacks=[callback], teacher_cache=teacher_cache)
    wall = time.perf_counter() - t
    curve = {0: level0, **callback.points}
    guard = result.held_back
    if guard is not None:  # the guard may hand back an earlier state than the curve's last point: score that too
        entry["held_back"] = guard.to_dict()
        entry["returned_dev"] = evaluate(result.model) if guard.returned != "final" else None
    return {**entry, "steps": result.steps, "tokens_trained": result.steps * per_step, "wall_seconds": round(wall, 1),
            "eval_seconds": round(callback.eval_seconds, 1),
            "student_tokens_per_second": round(callback.tokens_per_second(result.steps), 1),
            "final_loss": result.losses[-1][1] if result.losses else None, "domain_counts": result.domain_counts,
            "curve": {str(k): v for k, v in sorted(curve.items())}, "complete": True,
            "learning_rate": result.config.learning_rate,
            "lr_probe": result.lr_probe.to_dict() if result.lr_probe is not None else None}, result.teacher_cache


def throughput(model, built, tokenizer, calibration, names: list[str], args, fresh=None) -> dict:
    """Student tokens/s of every run type on one level, measured back to back in this process (same machine load):
    ``--throughput-steps`` optimizer steps each, on a fresh copy, after one untimed warm-up step. ``fresh()`` makes
    each student (default: a copy of ``built``; on a GPU, slicing the dense model again saves holding ``built``).
    No windows are held back: their evaluations would count as step time, and a few windows suffice."""
    fresh = fresh or (lambda: copy.deepcopy(built))
    speeds = {}
    for name in names:
        config = run_config(name, args, args.throughput_steps * args.train_seq_len * args.batch_size).replace(
            held_back=0)
        windows = training_windows(calibration, tokenizer, config)
        teacher = model if config.needs_teacher else None
        recover(fresh(), teacher, tokenizer, None, config.replace(tokens=config.tokens_per_step),
                windows=windows, show_progress=False)  # warm-up: allocator, thread pools
        result = recover(fresh(), teacher, tokenizer, None, config, windows=windows, show_progress=False)
        speeds[name] = round(result.tokens_per_second, 1)
        print(f"    {name}: {speeds[name]:.0f} student tok/s", flush=True)
    base = speeds.get("lm")
    return {"steps": args.throughput_steps, "tokens_per_second": speeds,
            "ratio_to_lm": {n: round(v / base, 3) for n, v in speeds.items()} if base else None}


def gap_recovered(dense: float, pruned: float, recovered: float) -> float:
    """Share of the perplexity gap to dense that recovery closed (1 = back to dense)."""
    return (pruned - recovered) / (pruned - dense)


def returned(run: dict) -> float:
    """Mean dev perplexity of the model the run handed back: the guard's best state when it returned an earlier
    one (``returned_dev``), else the curve's last point."""
    curve = run["curve"]
    return (run.get("returned_dev") or curve[max(curve, key=int)])["mean"]


def table(data: dict) -> str:
    dense, points = data["dense"]["mean"], _points(data)
    rows = []
    for level, runs in data["levels"].items():
        for name, run in runs.items():
            curve, guard = run["curve"], run.get("held_back")
            kept = f"step {guard['best_step']} ({guard['returned']})" if guard else ""
            rows.append([f"{float(level):.0%}", name, *[f"{curve[t]['mean']:.2f}" if t in curve else "" for t in points],
                         f"{returned(run):.2f}", kept, f"{gap_recovered(dense, curve['0']['mean'], returned(run)):.0%}",
                         f"{run.get('student_tokens_per_second', 0):.0f}"])
    head = ["level", "run", *[f"{int(t) / 1000:g}k" for t in points], "returned", "held-back guard kept",
            "gap closed (returned)", "tok/s during the run"]
    return f"dense: {dense:.2f}\n" + markdown_table(head, rows, "ll" + "r" * (len(points) + 1) + "lrr")


def throughput_table(data: dict) -> str:
    """Student tokens/s per run type and level, and the ratio to the plain LM step (from ``--throughput-steps``)."""
    rows = []
    for level, entry in data.get("throughput", {}).items():
        for name, speed in entry["tokens_per_second"].items():
            ratio = (entry.get("ratio_to_lm") or {}).get(name)
            rows.append([f"{float(level):.0%}", name, f"{speed:.0f}", f"{ratio:.2f}x" if ratio else ""])
    return markdown_table(["level", "run", "student tok/s", "vs plain LM step"], rows, "llrr")


def _points(data: dict) -> list[str]:
    return sorted({t for runs in data["levels"].values() for r in runs.values() for t in r["curve"]}, key=int)


def plot(path: Path, data: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = {"kd": "-", "lm": "--", "kd-lora": ":", "kd+lm": "-.", "local": (0, (5, 1, 1, 1))}
    colors = plt.get_cmap("tab10").colors
    for k, (level, runs) in enumerate(data["levels"].items()):
        for name, run in runs.items():
            points = sorted((int(t), v["mean"]) for t, v in run["curve"].items())
            ax.plot([t / 1000 for t, _ in points], [v for _, v in points], marker="o", markersize=3,
                    linestyle=styles.get(name, "-"), color=colors[k % len(colors)],
                    label=f"{float(level):.0%} {name}")
            if run.get("returned_dev"):  # the held-back guard handed back an earlier step than the curve's last
                ax.plot(run["held_back"]["best_step"] * run["tokens_per_step"] / 1000, run["returned_dev"]["mean"],
                        marker="*", markersize=10, linestyle="", color=colors[k % len(colors)],
                        label=f"{float(level):.0%} {name}: returned (held-back best)")
    for name, run in data.get("control", {}).items():  # the dense model trained the same way: adaptation, not recovery
        points = sorted((int(t), v["mean"]) for t, v in run["curve"].items())
        ax.plot([t / 1000 for t, _ in points], [v for _, v in points], marker="x", color="grey", linestyle="--",
                label=f"{name} (control)")
    finish_perplexity_plot(fig, ax, path, dense=data["dense"]["mean"], xlabel="recovery training tokens (thousands)",
                           title=title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--sparsities", default="0.3,0.5")
    parser.add_argument("--runs", default="kd,lm,kd-lora",
                        help=f"run configurations: {', '.join(RUNS)}; LEVEL:NAME runs NAME at that level only")
    parser.add_argument("--tokens", default="500k", help="training token budget of every run (sets the schedule)")
    parser.add_argument("--stop-at", default="",
                        help="stop some runs early, e.g. 0.3:lm=62.5k,0.5:kd=125k (the schedule stays --tokens')")
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plot of --out")
    parser.add_argument("--eval-at", default="62.5k,125k,250k,500k", help="token counts to evaluate at")
    parser.add_argument("--lr", default="auto", help="learning rate of full-parameter runs (default: the library's, "
                        "'auto': the probe, with the held-back guard)")
    parser.add_argument("--lora-lr", default="auto", help="learning rate of LoRA runs (default 'auto', as --lr)")
    parser.add_argument("--train-seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128, help="calibration windows of the pruning run")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--eval-seq-len", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--level-cache", default=str(cache_dir() / "bench" / "recovery_levels"),
                        help="folder keeping each pruned level for later calls with the same settings ('': none); "
                             "empty it after changing the engine, whose version the key does not hold")
    parser.add_argument("--append", action="store_true", help="keep the runs already in --out, run the missing ones")
    parser.add_argument("--dense-control", action="store_true",
                        help="instead of pruning: train a copy of the dense model with the lm run (stop with "
                             "--stop-at dense:lm=N): how much of an lm run's gain is adaptation to the corpus")
    parser.add_argument("--throughput-steps", type=int, default=0,
                        help="instead of the curves: time N steps of every --runs type per level, back to back")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = corpus_dir("bench_recovery")
    runs = [r for r in args.runs.split(",") if r]  # NAME (every level) or LEVEL:NAME (that level only)
    unknown = [r for r in runs if r.rpartition(":")[2].partition("@")[0] not in RUNS]
    if unknown:
        sys.exit(f"bench_recovery: unknown run(s) {unknown}; choose from {list(RUNS)}")
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    calibration = CalibrationMix({d: {"source": calib_file(corpus, d), "weight": 1.0} for d in DOMAINS})
    evals = dev_files(corpus)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"recovery_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(out.read_text()) if (args.append or args.report) and out.is_file() else {}
    data.setdefault("levels", {})
    data.setdefault("runs_log", []).append({"argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    # a throughput or control run keeps the curves' settings
    key = "throughput_settings" if args.throughput_steps else "control_settings" if args.dense_control else "settings"
    # the level cache is where, not how, the levels were built (and a machine path): left out of the record
    settings = {k: v for k, v in vars(args).items() if k != "level_cache"}
    data[key] = {**settings, "domains": DOMAINS, "torch": torch.__version__,
                 "machine": platform.processor() or platform.machine(),
                 "note": "CPU, 2 cores; the lr schedule spans the whole --tokens budget, intermediate points "
                         "are evaluated during that run"}

    if args.report:
        print("Mean dev perplexity vs recovery tokens:\n" + table(data))
        for name, run in data.get("control", {}).items():
            print(f"control {name}: " + ", ".join(f"{int(t) / 1000:g}k: {v['mean']:.2f}" for t, v in run["curve"].items()))
        print("\nThroughput:\n" + throughput_table(data))
        plot(out.with_suffix(".png"), data, f"{args.model}: recovery (gisp, compensated)")
        return
    stops = {}
    for item in (i for i in args.stop_at.split(",") if i):
        key, _, value = item.partition("=")
        stops[key] = parse_tokens(value)
    model, tokenizer = load_model(args.model)
    model.eval()
    evaluate = evaluator(tokenizer, evals, calibration, args)
    print(f"model {args.model}: gisp {args.steps} steps, {args.num_samples} x {args.seq_len} calibration tokens; "
          f"recovery {args.tokens} tokens of {args.train_seq_len}-token windows, batch {args.batch_size}", flush=True)
    t0 = time.perf_counter()
    data["dense"] = data.get("dense") or evaluate(model)
    print(f"  dense: mean {data['dense']['mean']:.2f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.dense_control:
        def save_control(entry):
            data.setdefault("control", {})["dense+lm"] = entry
            out.write_text(json.dumps(data, indent=1))

        stop = stops.get("dense:lm", parse_tokens(args.tokens))
        save_control(run_one(model, copy.deepcopy(model), tokenizer, calibration, "lm", args, evaluate, data["dense"],
                             stop, save_control)[0])
        return
    levels = Levels(model, tokenizer, calibration, sparsities, args)
    if args.throughput_steps:
        names = list(dict.fromkeys(r.rpartition(":")[2] for r in runs))
        for s in sparsities:
            print(f"  {s:.0%}: throughput of {', '.join(names)}", flush=True)
            built = levels.build(s)
            data["prune_seconds"] = levels.seconds or data.get("prune_seconds")
            data.setdefault("throughput", {})[str(s)] = throughput(model, built, tokenizer, calibration, names, args)
            out.write_text(json.dumps(data, indent=1))
        return
    for s in sparsities:
        level = data["levels"].setdefault(str(s), {})
        level0 = built = cache = None
        for name in [r.rpartition(":")[2] for r in runs if r.rpartition(":")[0] in ("", str(s))]:
            if level.get(name, {}).get("complete"):
                continue
            # Built (and compensated) once per level; every run trains its own copy.
            built = built or levels.build(s)
            pruned = copy.deepcopy(built)
            level0 = level0 or evaluate(pruned)
            print(f"  {s:.0%} {name}: pruned mean {level0['mean']:.2f}", flush=True)
            def save(entry, level=level, name=name):
                level[name] = entry
                out.write_text(json.dumps(data, indent=1))

            stop = stops.get(f"{s}:{name}", parse_tokens(args.tokens))
            entry, ran = run_one(model, pruned, tokenizer, calibration, name, args, evaluate, level0, stop, save, cache)
            cache = ran or cache  # the same windows' teacher distributions: run the teacher once
            level[name] = entry
            print(f"  {s:.0%} {name}: {entry['student_tokens_per_second']:.0f} student tok/s, "
                  f"{entry['wall_seconds']:.0f}s", flush=True)
            out.write_text(json.dumps(data, indent=1))
            del pruned
    if levels.seconds:
        data["prune_seconds"] = levels.seconds
    out.write_text(json.dumps(data, indent=1))
    print("\nMean dev perplexity vs recovery tokens:\n" + table(data))
    plot(out.with_suffix(".png"), data, f"{args.model}: recovery (gisp, compensated)")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
