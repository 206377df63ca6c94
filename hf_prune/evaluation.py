"""Per-domain perplexity of a causal LM, to compare a model before and after pruning.

Method (stated in every report): the documents of a domain are tokenised without special tokens, each
followed by EOS, and concatenated into one token stream (the same packing as calibration). Windows of
``seq_len`` tokens start every ``stride`` tokens (``stride = seq_len``: non-overlapping, the default).
The first window scores all of its ``seq_len - 1`` next-token predictions; a later window scores only its
last ``stride`` tokens (all ``seq_len - 1`` when windows do not overlap), so with overlap each token is
scored once, with at least ``seq_len - stride`` tokens of context. **The trailing tokens that do not fill
a whole window are dropped**: every window is full length, no padding or attention mask is involved,
and the result is identical whatever the batch size. Perplexity = ``exp`` of the token-weighted mean
NLL over all scored tokens of the domain.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from .data.sources import DomainSource
from .data.calibration import as_calibration
from .data.spec import check_overlap
from .errors import CalibrationError, EvaluationError
from .markdown import table
from .options import is_int

if TYPE_CHECKING:
    from .data.mix import CalibrationMix
    from .data.windows import CalibrationWindows

__all__ = ["PerplexityReport", "evaluate_perplexity", "check_evaluation_options"]


@dataclass
class PerplexityReport:
    """Per-domain perplexity, with the settings it was measured under.

    Attributes:
        per_domain: perplexity of each domain.
        nll: mean next-token negative log-likelihood (nats) of each domain.
        tokens: scored tokens of each domain.
        windows: evaluated windows of each domain.
        seq_len, stride: window length and step, in tokens.
        label: free text naming the model (e.g. "dense", "pruned 30%").
    """

    per_domain: dict[str, float]
    nll: dict[str, float]
    tokens: dict[str, int]
    windows: dict[str, int]
    seq_len: int
    stride: int
    label: str | None = None
    method: str = field(
        default="packed EOS-joined documents; full windows only (tail dropped); token-weighted mean NLL -> exp",
        repr=False,
    )

    @property
    def mean(self) -> float:
        """Unweighted mean of the per-domain perplexities (each domain counts once)."""
        return sum(self.per_domain.values()) / len(self.per_domain)

    @property
    def token_weighted(self) -> float:
        """Perplexity over all domains' tokens pooled (large domains weigh more)."""
        total = sum(self.tokens.values())
        return math.exp(sum(self.nll[d] * self.tokens[d] for d in self.nll) / total)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"] = self.mean
        out["token_weighted"] = self.token_weighted
        return out

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerplexityReport:
        keys = {"per_domain", "nll", "tokens", "windows", "seq_len", "stride", "label", "method"}
        return cls(**{k: v for k, v in data.items() if k in keys})

    def to_markdown(self) -> str:
        """A markdown table: domain, perplexity, windows, tokens; then the mean."""
        title = f" ({self.label})" if self.label else ""
        rows = [[d, f"{ppl:.3f}", self.windows[d], self.tokens[d]] for d, ppl in self.per_domain.items()]
        rows.append(["**mean**", f"**{self.mean:.3f}**", sum(self.windows.values()), sum(self.tokens.values())])
        return (f"Perplexity{title}, seq_len {self.seq_len}, stride {self.stride}\n\n"
                + table(["domain", "perplexity", "windows", "tokens"], rows, "lrrr"))

    def compare(self, other: PerplexityReport, labels: tuple[str, str] | None = None) -> str:
        """Markdown table of ``self`` (before) against ``other`` (after) with the ratio after/before."""
        if (self.seq_len, self.stride) != (other.seq_len, other.stride):
            warnings.warn(
                f"comparing reports measured with different windows ({self.seq_len}/{self.stride} vs "
                f"{other.seq_len}/{other.stride})",
                stacklevel=2,
            )
        a, b = labels or (self.label or "before", other.label or "after")
        rows = []
        for d, ppl in self.per_domain.items():
            o = other.per_domain.get(d)
            rows.append([d, f"{ppl:.3f}", "-", "-"] if o is None else [d, f"{ppl:.3f}", f"{o:.3f}", f"{o / ppl:.3f}"])
        common = [d for d in self.per_domain if d in other.per_domain]
        if common:
            m1 = sum(self.per_domain[d] for d in common) / len(common)
            m2 = sum(other.per_domain[d] for d in common) / len(common)
            rows.append(["**mean**", f"**{m1:.3f}**", f"**{m2:.3f}**", f"**{m2 / m1:.3f}**"])
        return table(["domain", a, b, "ratio"], rows, "lrrr")


def _window_plan(n_tokens: int, seq_len: int, stride: int, cap: int | None) -> list[tuple[int, int]]:
    """``(start, first scored target position)`` of each evaluated window."""
    n = 0 if n_tokens < seq_len else (n_tokens - seq_len) // stride + 1
    idx = list(range(n))
    if cap is not None and n > cap:
        # Evenly spaced, so a capped run still covers the whole domain rather than its first documents.
        idx = sorted({round(i * (n - 1) / max(cap - 1, 1)) for i in range(cap)})
    return [(i * stride, 1 if i == 0 else max(1, seq_len - stride)) for i in idx]


def _positive_int(value: Any) -> bool:
    return is_int(value) and value >= 1


def check_evaluation_options(*, seq_len: int, stride: int | None = None, batch_size: int = 1,
                             max_windows_per_domain: int | None = None) -> None:
    """Raise :class:`EvaluationError` for unusable window settings (cheap: call it before loading a model)."""
    if not _positive_int(seq_len) or seq_len < 2:
        raise EvaluationError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    if stride is not None and (not _positive_int(stride) or stride > seq_len):
        raise EvaluationError(f"stride must be in [1, seq_len={seq_len}], got {stride!r}")
    if not _positive_int(batch_size):
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size!r}")
    if max_windows_per_domain is not None and not _positive_int(max_windows_per_domain):
        raise EvaluationError(f"max_windows_per_domain must be >= 1, got {max_windows_per_domain!r}")


def _domains(eval_texts: Any) -> dict[str, Any]:
    """``{domain: DomainSource | documents}`` of the evaluation text (checked before any model work)."""
    data = as_calibration(eval_texts)
    domains = data.domains() if data is not None else None
    if domains is None:
        raise CalibrationError("evaluation texts must be a CalibrationMix or a mapping domain -> source/texts, got "
                               f"{type(eval_texts).__name__}")
    return domains


# ---- main entry --------------------------------------------------------------------------------------
def evaluate_perplexity(
    model: Any,
    tokenizer: Any,
    eval_texts: CalibrationMix | Mapping[str, Any],
    *,
    seq_len: int = 256,
    stride: int | None = None,
    batch_size: int = 8,
    max_windows_per_domain: int | None = None,
    calibration: CalibrationMix | CalibrationWindows | Mapping[str, Any] | None = None,
    label: str | None = None,
    progress: bool = True,
    cache: bool | str | os.PathLike[str] = True,
) -> PerplexityReport:
    """Perplexity of ``model`` on each evaluation domain (see the module docstring for the method).

    Args:
        eval_texts: a :class:`CalibrationMix` (weights ignored) or a mapping ``{domain: source}`` (path,
            Hub id or field mapping, as in a mix) or ``{domain: [documents]}``.
        seq_len: window length in tokens.
        stride: step between window starts; ``None`` = ``seq_len`` (non-overlapping).
        batch_size: windows per forward pass (does not change the result).
        max_windows_per_domain: evaluate at most this many windows per domain, evenly spaced.
        calibration: the calibration mix used for pruning (or the windows drawn from it); an evaluation
            source that is the same file (or Hub split) is refused, and shared documents draw a :class:`~hf_prune.errors.DataOverlapWarning`.
        label: name of the model in the report.
        progress: show a tqdm progress bar.
        cache: token cache for file/Hub sources (see :func:`hf_prune.data.windows.domain_token_stream`).

    Raises:
        CalibrationError: bad sources, a calibration/evaluation clash, or a domain shorter than one window;
            all checked before the model runs.
        EvaluationError: unusable window settings.
    """
    stride = seq_len if stride is None else stride
    check_evaluation_options(seq_len=seq_len, stride=stride, batch_size=batch_size,
                             max_windows_per_domain=max_windows_per_domain)
    evals = _domains(eval_texts)
    if calibration is not None:
        check_overlap(calibration, eval_texts, tokenizer=tokenizer)
    streams, plans = _plan_windows(evals, tokenizer, seq_len, stride, max_windows_per_domain, cache)
    nll_sum, n_tok = _score_windows(model, streams, plans, seq_len, batch_size, progress)
    mean_nll = {d: nll_sum[d] / n_tok[d] for d in evals}
    return PerplexityReport(
        per_domain={d: math.exp(v) for d, v in mean_nll.items()},
        nll=mean_nll,
        tokens=n_tok,
        windows={d: len(plans[d]) for d in evals},
        seq_len=seq_len,
        stride=stride,
        label=label,
    )


def _plan_windows(evals: Mapping[str, Any], tokenizer: Any, seq_len: int, stride: int,
                  max_windows_per_domain: int | None, cache: bool | str | os.PathLike[str]) -> tuple[dict, dict]:
    """Every domain's token stream and window plan, built before any forward pass so data errors surface first."""
    from .data.windows import domain_token_stream, tokenize_documents

    streams, plans = {}, {}
    for name, src in evals.items():
        if isinstance(src, DomainSource):
            stream = domain_token_stream(src, tokenizer, cache=cache)
        else:
            stream = tokenize_documents(src, tokenizer)
        plan = _window_plan(stream.numel(), seq_len, stride, max_windows_per_domain)
        if not plan:
            raise CalibrationError(
                f"domain {name!r} is too small to evaluate: {stream.numel()} tokens, fewer than one window "
                f"of seq_len={seq_len}"
            )
        streams[name], plans[name] = stream, plan
    return streams, plans


def _score_windows(model: Any, streams: dict, plans: dict, seq_len: int, batch_size: int,
                   progress: bool) -> tuple[dict[str, float], dict[str, int]]:
    """Summed next-token NLL and the number of scored tokens per domain, in eval mode without gradients."""
    import torch
    from tqdm.auto import tqdm

    jobs = [(name, start, first) for name, plan in plans.items() for start, first in plan]
    nll_sum, n_tok = dict.fromkeys(plans, 0.0), dict.fromkeys(plans, 0)
    device = next(model.parameters()).device
    was_training, grad_enabled = model.training, torch.is_grad_enabled()
    model.eval()
    torch.set_grad_enabled(False)
    try:
        bar = tqdm(total=len(jobs), desc="perplexity", unit="win", disable=not progress)
        positions = torch.arange(seq_len - 1, device=device)
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i : i + batch_size]
            ids = torch.stack([streams[n][s : s + seq_len] for n, s, _ in chunk]).long().to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
            ).view(len(chunk), seq_len - 1)
            # Logit position p predicts token p + 1: a window scores targets from `first` on.
            firsts = torch.tensor([f for _, _, f in chunk], device=device)
            keep = positions.unsqueeze(0) >= (firsts - 1).unsqueeze(1)
            per_window = (nll * keep).double().sum(dim=1).tolist()
            counts = keep.sum(dim=1).tolist()
            for (name, _, _), s, c in zip(chunk, per_window, counts):
                nll_sum[name] += s
                n_tok[name] += int(c)
            bar.update(len(chunk))
        bar.close()
    finally:
        torch.set_grad_enabled(grad_enabled)
        model.train(was_training)
    return nll_sum, n_tok
