"""Data-parallel scoring: 2 processes (torchrun, gloo) against 1 on the same windows, SmolLM2.

    python benchmarks/bench_dp.py                      # runs both and prints the comparison

Each run is ``hf_prune.prune`` with ``gisp`` (2 rounds, compensation off) on ``--num-samples`` windows of
random tokens; the 2-process run is ``torchrun --standalone --nproc-per-node 2`` of this script with ``--child``.
Reported: seconds per round (rank 0's log), whether the plans are equal, and the bytes all-reduced per round.
On a 2-core machine two processes share the same two cores, so no speed-up is expected there.
Writes ``benchmarks/results/dp_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from common import MODELS, ROOT, load_model  # noqa: E402


class _Traffic(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        if "all-reduced" in record.getMessage():
            self.lines.append(record.getMessage())


def child(args) -> dict:
    import hf_prune
    from hf_prune.engine.distributed import init_from_env, is_main, world_size

    init_from_env()
    torch.set_num_threads(max(1, args.threads // world_size()))
    traffic = _Traffic()
    logging.getLogger("hf_prune").addHandler(traffic)
    logging.getLogger("hf_prune").setLevel(logging.INFO)
    model, _ = load_model(args.model)
    ids = torch.randint(0, model.config.vocab_size, (args.num_samples, args.seq_len),
                        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    result = hf_prune.prune(model, None, ids, [0.3], method="gisp", steps=2, batch_size=args.batch_size,
                            seq_len=args.seq_len, num_samples=args.num_samples, compensation=None, show_progress=False)
    out = {"world_size": world_size(), "seconds": time.perf_counter() - t0,
           "round_seconds": [round(e.seconds, 2) for e in result.log], "traffic": traffic.lines,
           "plan": result.plans[0.3].to_dict()["layers"]}
    if is_main():
        Path(args.child).write_text(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    common = ["--model", args.model, "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len),
              "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    runs = {}
    for procs in (1, 2):
        out = ROOT / "benchmarks" / "results" / f".dp_{procs}.json"
        launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         "--nproc-per-node", str(procs)]
        subprocess.run([*launcher, str(Path(__file__)), *common, "--child", str(out)], check=True, cwd=ROOT / "benchmarks")
        runs[procs] = json.loads(out.read_text())
        out.unlink()
    payload = {"settings": vars(args) | {"torch": torch.__version__, "cores": os.cpu_count()},
               "same_plan": runs[1]["plan"] == runs[2]["plan"],
               "one_process": {k: v for k, v in runs[1].items() if k != "plan"},
               "two_processes": {k: v for k, v in runs[2].items() if k != "plan"}}
    path = ROOT / "benchmarks" / "results" / f"dp_{args.model}.json"
    path.write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
