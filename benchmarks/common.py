"""What the benchmark scripts share: the corpus location, the models by name, the calibration/dev files, RSS.

Scripts run as ``python benchmarks/<script>.py``, so this folder is on ``sys.path``; the repository root is
added too, so they also run without installing hf-prune.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

#: The domains of ``../shared/corpus`` (``calib/<domain>.jsonl`` and ``dev/<domain>.jsonl``).
DOMAINS = ["web", "prose", "code", "math", "docs", "dialogue", "zh"]
#: Benchmark model names -> loaders in :mod:`hf_prune.demo.assets`.
MODELS = ("smollm2", "qwen")


def corpus_dir(tool: str) -> Path:
    """``$HF_PRUNE_CORPUS`` or ``../shared/corpus``; exits with a message naming ``tool`` when it is missing."""
    path = Path(os.environ.get("HF_PRUNE_CORPUS", ROOT.parent / "shared" / "corpus"))
    if not (path / "calib").is_dir() or not (path / "dev").is_dir():
        sys.exit(f"{tool}: the corpus is missing: expected {path}/calib and {path}/dev "
                 "(set HF_PRUNE_CORPUS to a folder holding calib/<domain>.jsonl and dev/<domain>.jsonl).")
    return path


def calib_file(corpus: Path, domain: str) -> str:
    return str(corpus / "calib" / f"{domain}.jsonl")


def add_suite_arguments(parser) -> None:
    """``--suite`` and ``--max-records``: where the local zero-shot suite goes and how many questions per task."""
    parser.add_argument("--max-records", type=int, default=200, help="questions per task in the built suite")
    parser.add_argument("--suite", default=None,
                        help="where the suite's .jsonl files go (default: ~/.cache/hf_prune/zero_shot_suite)")


def zero_shot_suite(corpus: Path, args):
    """The local zero-shot suite (:mod:`hf_prune.data.zero_shot`) built from ``corpus`` and loaded by lm-eval:
    ``(TaskSuite, {task: file})``. Written outside the repository by default: it is corpus text, which the project
    does not vendor."""
    from hf_prune.accuracy import prepare_tasks
    from hf_prune.data.zero_shot import build_zero_shot_suite
    from hf_prune.fileio import cache_dir

    folder = Path(args.suite) if args.suite else cache_dir() / "zero_shot_suite"
    written = build_zero_shot_suite(corpus, folder, max_records=args.max_records)
    return prepare_tasks([str(p) for p in written.values()]), written


def dev_files(corpus: Path) -> dict[str, str]:
    """``{domain: dev jsonl}`` for :func:`hf_prune.evaluate_perplexity`."""
    return {d: str(corpus / "dev" / f"{d}.jsonl") for d in DOMAINS}


def load_model(name: str, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: ``smollm2`` (SmolLM2-135M-Instruct) or ``qwen`` (Qwen2.5-Coder-0.5B-Instruct)."""
    from hf_prune.demo import assets

    if name == "smollm2":
        return assets.load_smollm2(dtype=dtype)
    if name == "qwen":
        return assets.load_qwen_coder_05b(dtype=dtype)
    sys.exit(f"unknown model {name!r}: one of {', '.join(MODELS)}")


def geometric_mean(values) -> float:
    """The geometric mean of positive numbers (of perplexity ratios: one domain's 2x weighs as much as another's
    0.5x, unlike the arithmetic mean of perplexities, which the highest-perplexity domain dominates)."""
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def status_kb(key: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def finish_perplexity_plot(fig, ax, path, *, dense: float, xlabel: str, title: str) -> None:
    """The end of every perplexity plot: the dense line, a log y axis, labels, the legend outside, saved."""
    ax.axhline(dense, color="grey", linestyle="--", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean dev perplexity (log)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class ChosenDampings(logging.Handler):
    """The dampings ``compensation_damping="auto"`` chooses while this context is open (its INFO log lines), in
    order: ``chosen`` holds ``(projection, damping)``; :meth:`counts` groups them by projection kind."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.chosen: list[tuple[str, float]] = []
        self._logger = logging.getLogger("hf_prune.engine.compensation")

    def emit(self, record: logging.LogRecord) -> None:
        if "chosen by leave-one-fold-out" in record.msg:
            self.chosen.append((record.args[0], float(record.args[1])))

    def __enter__(self) -> ChosenDampings:
        self._level = self._logger.level
        self._logger.addHandler(self)
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"down_proj": {"1": 25, "0.1": 3}, ...}``."""
        out: dict[str, dict[str, int]] = {}
        for where, damping in self.chosen:
            kind = out.setdefault(where.split()[-1], {})
            kind[f"{damping:g}"] = kind.get(f"{damping:g}", 0) + 1
        return out
