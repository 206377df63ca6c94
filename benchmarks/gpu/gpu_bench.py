"""GPU evidence in one command: scoring, the memory plan, compensation, prefill/decode speed-ups and recovery
throughput at the real shapes of Qwen2.5-7B (and 14B) with random bf16 weights, on one GPU, in under 8 minutes.

    bash benchmarks/gpu/run.sh --out OUT              # the GPU run (see benchmarks/gpu/README.md)
    bash benchmarks/gpu/run.sh --smoke --out OUT      # the same sections on a tiny model on CPU, in seconds

Writes ``OUT/results.json`` (after every section and every measured model, so a run stopped part-way keeps what
it measured), ``OUT/results.md`` (the tables) and ``OUT/log.txt``. Sections run in the order of their value
(``measure.SECTIONS``); one that would not finish inside ``--budget-s`` is skipped and recorded as skipped, one
that fails is recorded with its error and the next one runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):  # this folder (measure, shapes, report) and benchmarks/ (common adds the root)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

#: Python packages the benchmark imports (hf-prune itself comes from this checkout), with the versions it needs.
REQUIRES = {"torch": "2.4", "transformers": "5.16.1", "accelerate": "1.0", "huggingface_hub": "1.0",
            "safetensors": "0.4", "tqdm": "4.60"}
#: Upper bounds (exclusive): the transformers range hf-prune supports (pyproject.toml).
BELOW = {"transformers": "6"}
#: GPU memory the sections need at least (the 7B model, a pruned copy and its activations).
MIN_GPU_BYTES = 60 * 2**30


class Budget:
    """Seconds left before ``seconds`` after the start; a piece of work starts only if its estimate fits."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, estimate: float) -> bool:
        return estimate <= self.left()


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


def card_name(gpu: str) -> str:
    """The file name of a card's results: ``"NVIDIA H100 80GB HBM3"`` -> ``"h100"`` (else the whole name, slugged)."""
    model = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", gpu.upper().replace("NVIDIA", ""))
    return (model.group(1) if model else re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")).lower()


def check_environment(cuda: bool) -> dict:
    """What the machine has, checked against what the benchmark needs; exits with one line when it falls short."""
    print("needs: Python >= 3.10; " + ", ".join(f"{k} >= {v}" + (f", < {BELOW[k]}" if k in BELOW else "")
                                                for k, v in REQUIRES.items()) +
          (f"; a CUDA GPU with >= {MIN_GPU_BYTES / 2**30:.0f} GiB and bf16" if cuda else "") +
          "; nothing is installed or downloaded", flush=True)
    found = {"python": platform.python_version(), "machine": platform.machine()}
    for name, lowest in REQUIRES.items():
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError as exc:  # missing, or one of its own dependencies is (transformers imports httpx)
            sys.exit(f"gpu_bench: {name} cannot be imported (needs {name} >= {lowest}): {exc}; carry the missing "
                     "wheels (--wheels).")
        if _version_tuple(found[name]) < _version_tuple(lowest):
            sys.exit(f"gpu_bench: {name} {found[name]} is too old (needs >= {lowest}); carry a newer wheel (--wheels).")
        if name in BELOW and _version_tuple(found[name]) >= _version_tuple(BELOW[name]):
            sys.exit(f"gpu_bench: {name} {found[name]} is outside the supported range (needs < {BELOW[name]}); "
                     "carry a supported wheel (--wheels).")
    if sys.version_info < (3, 10):
        sys.exit(f"gpu_bench: Python {found['python']} is too old (needs >= 3.10).")
    try:  # every project piece the sections call (hf-prune runs from this checkout), and the sections themselves
        for module in ("hf_prune.modeling", "hf_prune.engine.importance", "hf_prune.engine.compensation",
                       "hf_prune.engine.memory", "hf_prune.format.slicing", "hf_prune.recovery.distill", "measure"):
            importlib.import_module(module)
    except ImportError as exc:
        sys.exit(f"gpu_bench: {module} cannot be imported here: {exc}")
    import torch

    if cuda:
        if not torch.cuda.is_available():
            sys.exit("gpu_bench: no CUDA device visible to torch (use --smoke for the CPU check).")
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        found.update(gpu=props.name, card=card_name(props.name), gpu_memory_bytes=total, gpu_free_bytes=free, cuda=torch.version.cuda,
                     bf16=torch.cuda.is_bf16_supported(), multiprocessors=props.multi_processor_count,
                     context_bytes=total - free - torch.cuda.memory_reserved(0))
        if free < MIN_GPU_BYTES or not found["bf16"]:
            sys.exit(f"gpu_bench: {props.name} has {free / 2**30:.0f} GiB free (needs {MIN_GPU_BYTES / 2**30:.0f}) "
                     f"and bf16 {'yes' if found['bf16'] else 'no'}.")
    print("found: " + ", ".join(f"{k} {v}" for k, v in found.items()), flush=True)
    return found


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and log.txt")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on CPU (the test of this script)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="start no section (or model) that would end after this many seconds (default: 420)")
    parser.add_argument("--sections", default=None, help="comma-separated subset, in any order (default: all)")
    return parser.parse_args(argv)


def chosen_sections(given: str | None) -> list[str]:
    """The section names ``--sections`` asks for (all by default); exits with one line on an unknown name."""
    from measure import SECTIONS

    known = [name for name, _, _ in SECTIONS]
    wanted = known if given is None else [s for s in given.split(",") if s]
    unknown = [s for s in wanted if s not in known]
    if unknown:
        sys.exit(f"gpu_bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return wanted


def main(argv=None) -> dict:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "log.txt").open("a")

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - budget.start:6.1f}s] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    environment = check_environment(cuda=not args.smoke)
    sections = chosen_sections(args.sections)
    import torch
    from measure import SECTIONS, Bench, Settings, smoke_settings
    from report import markdown

    torch.manual_seed(0)
    if args.smoke:  # tiny matrices: one thread (two spin-wait against each other on a shared machine)
        torch.set_num_threads(1)
    settings = smoke_settings() if args.smoke else Settings()
    results = {"benchmark": "benchmarks/gpu", "smoke": args.smoke, "environment": environment,
               "settings": {**asdict(settings), "default_channel_multiple": settings.multiple},
               "budget_s": args.budget_s, "sections": {}, "seconds": {}, "skipped": {}, "errors": {},
               "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save() -> None:
        results["wall_s"] = time.perf_counter() - budget.start
        tmp = args.out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
        os.replace(tmp, args.out / "results.json")
        (args.out / "results.md").write_text(markdown(results) + "\n")

    bench = Bench(settings, log, budget, save, context_bytes=environment.get("context_bytes", 0))
    log(f"sections: {', '.join(sections)}; budget {args.budget_s:.0f}s")
    for name, section, estimate in SECTIONS:
        if name not in sections:
            continue
        if not budget.allows(0 if args.smoke else estimate):
            results["skipped"][name] = f"time budget: {budget.left():.0f}s left, the section needs about {estimate}s"
            log(f"skipped {name}: {results['skipped'][name]}")
            continue
        t0 = time.perf_counter()
        out = results["sections"][name] = {}
        try:
            section(bench, out)
        except Exception as exc:  # noqa: BLE001 - recorded; the next section still runs
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed: {results['errors'][name]}\n{traceback.format_exc()}")
        results["seconds"][name] = time.perf_counter() - t0
        save()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    print("\n" + markdown(results))
    log(f"wrote {args.out / 'results.json'} and results.md in {time.perf_counter() - budget.start:.0f}s")
    return results


if __name__ == "__main__":
    main()
