"""One entry point for calibration (and evaluation) data: :func:`as_calibration`.

Users give data in many forms: a :class:`~hf_prune.CalibrationMix`, its command-line form
(``"web=0.3,code=data/code.jsonl@0.7"``), a YAML/JSON mix file, a mapping, ``{domain: [documents]}`` (evaluation),
windows already drawn, a ``[N, seq_len]`` tensor of token ids, multiple-choice batches or ready batch dicts.
:func:`as_calibration` decides once which one it is and returns a :class:`Calibration`; scoring, compensation, the
windows ``auto`` priors hold back, recovery and the overlap check all ask that object, never the raw form.

A mix's draws are kept on its object: a draw asked for again (the held-back windows need the scoring draw) is
the same windows, not drawn twice. Building one imports no torch: the command line checks specs instantly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import CalibrationError
from .mix import CalibrationMix, _domain_from_spec
from .sources import DomainSource

__all__ = ["as_calibration", "Calibration", "Domains"]

#: ``{domain: DomainSource | documents}``: where each domain's text comes from.
Domains = dict[str, DomainSource | list[str]]

_KINDS = ("a CalibrationMix (or its text forms), CalibrationWindows, a [N, seq_len] tensor of token ids, a "
          "MultipleChoiceBatch or a list of batch dicts")


def _is_documents(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value)


class Calibration:
    """Calibration data in one of the accepted forms (see the module docstring); build it with :func:`as_calibration`.

    Attributes:
        mix: the :class:`CalibrationMix` windows are drawn from, or ``None`` for data given as tokens.
        kind: the type of what was given (``"CalibrationMix"``, ``"CalibrationWindows"``, ``"Tensor"``, ...).
    """

    mix: CalibrationMix | None = None
    kind: str = "CalibrationMix"

    def draw(self, num_samples: int, seq_len: int, seed: int, *, tokenizer: Any = None) -> Any:
        """``num_samples`` windows of ``seq_len`` tokens drawn with ``seed`` (a mix), or the data as given (tokens:
        every window or batch, whatever is asked)."""
        raise NotImplementedError

    def batches(self, num_samples: int, seq_len: int, seed: int, batch_size: int, device: Any, *,
                tokenizer: Any = None) -> list[dict[str, Any]]:
        """:meth:`draw`'s data as batches of ``batch_size`` (dicts of tensors on ``device``; token windows carry
        their ``domains``)."""
        return _windows_batches(self.draw(num_samples, seq_len, seed, tokenizer=tokenizer), batch_size, device)

    def pools(self, seq_len: int, tokenizer: Any = None) -> dict[str, tuple[float, Any]]:
        """``{domain: (weight, [n, seq_len] windows)}``: every window each domain holds, what recovery draws from."""
        raise CalibrationError(f"windows are drawn from a CalibrationMix, CalibrationWindows or a [N, seq_len] tensor "
                               f"of token ids; got {self.kind}.")

    def domains(self) -> Domains | None:
        """Where each domain's text comes from; ``None`` for data given as tokens (nothing to compare)."""
        return None

    def describe(self) -> Any:
        """What identifies the data in a run's state (a resumed run must see the same)."""
        raise NotImplementedError


class _Mix(Calibration):
    def __init__(self, mix: CalibrationMix) -> None:
        self.mix = mix
        self._drawn: dict[tuple[int, int, int], tuple[Any, Any]] = {}

    def _need(self, tokenizer: Any) -> None:
        if tokenizer is None:
            raise CalibrationError("windows are drawn from a CalibrationMix with the model's tokenizer: pass it "
                                   "(prune(model, tokenizer, calibration, ...)).")

    def draw(self, num_samples, seq_len, seed, *, tokenizer=None):
        self._need(tokenizer)
        key = (num_samples, seq_len, seed)
        held = self._drawn.get(key)
        if held is not None and held[0] is tokenizer:  # the entry holds the tokenizer: its identity stays valid
            return held[1]
        windows = self.mix.sample(tokenizer, num_samples, seq_len, seed=seed)
        self._drawn[key] = (tokenizer, windows)
        return windows

    def pools(self, seq_len, tokenizer=None):
        from .windows import domain_token_stream, pack_windows

        self._need(tokenizer)
        return {s.name: (s.weight, pack_windows(domain_token_stream(s, tokenizer), seq_len))
                for s in self.mix.sources if s.weight > 0}

    def domains(self):
        return {s.name: s for s in self.mix.sources}

    def describe(self):
        return self.mix.to_dict()


class _Documents(Calibration):
    """``{domain: [documents]}`` (sources may sit beside them): text to evaluate on, never drawn from."""

    kind = "dict"

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if set(spec) == {"domains"} and isinstance(spec["domains"], Mapping):
            spec = spec["domains"]
        self._domains: Domains = {}
        for name, value in spec.items():
            if _is_documents(value):
                docs = [v for v in value if v.strip()]
                if not docs:
                    raise CalibrationError(f"domain {name!r}: no non-empty evaluation texts")
                self._domains[name] = docs
            else:
                self._domains[name] = _domain_from_spec(name, value)

    def draw(self, num_samples, seq_len, seed, *, tokenizer=None):
        raise CalibrationError("documents given as lists are evaluation text; calibrate on a CalibrationMix (files or "
                               "Hub datasets) or on token ids.")

    def domains(self):
        return dict(self._domains)

    def describe(self):
        return self.kind


class _Tokens(Calibration):
    """Windows or batches given as tokens: used as they are, whatever a draw asks for."""

    def __init__(self, data: Any, windows: Any = None) -> None:
        self.data, self.windows = data, windows  # windows: the CalibrationWindows form of token windows
        self.kind = type(data).__name__

    def draw(self, num_samples, seq_len, seed, *, tokenizer=None):
        return self.windows if self.windows is not None else self.data

    def pools(self, seq_len, tokenizer=None):
        if self.windows is None:
            return super().pools(seq_len, tokenizer)
        return {d: (float(t.shape[0]), t) for d, t in self.windows.by_domain().items()}

    def domains(self):
        spec = self.windows.spec if self.windows is not None else None  # windows remember the mix they came from
        return {s.name: s for s in CalibrationMix(spec).sources} if spec else None

    def describe(self):
        return self.windows.to_dict() if self.data is self.windows else self.kind


def as_calibration(spec: Any) -> Calibration | None:
    """The :class:`Calibration` of any accepted form (``None`` stays ``None``); a mix's sources are checked
    (:meth:`~hf_prune.data.sources.DomainSource.check`: local files read far enough to know they hold text).

    Raises:
        CalibrationError: an unknown form, a bad mix (unknown preset, missing file, bad weight...).
    """
    if spec is None or isinstance(spec, Calibration):
        return spec
    if isinstance(spec, CalibrationMix):
        return _checked(spec)
    if isinstance(spec, (str, os.PathLike)):
        return _checked(CalibrationMix.parse(os.fspath(spec)))
    if isinstance(spec, Mapping):
        body = spec["domains"] if set(spec) == {"domains"} and isinstance(spec["domains"], Mapping) else spec
        if any(_is_documents(v) for v in body.values()):
            return _Documents(spec)
        return _checked(CalibrationMix(spec))
    return _tokens(spec)


def _checked(mix: CalibrationMix) -> Calibration:
    for src in mix.sources:
        src.check()  # a missing, empty or binary file, a field it lacks, a malformed dataset id: fails now
    return _Mix(mix)


def _tokens(spec: Any) -> Calibration:
    # Only data already in memory gets here, so torch is loaded already.
    import torch

    from .multiple_choice import MultipleChoiceBatch
    from .windows import CalibrationWindows

    if isinstance(spec, torch.Tensor):
        return _Tokens(spec, CalibrationWindows(spec.long(), ["calibration"] * spec.shape[0]))
    if isinstance(spec, CalibrationWindows):
        return _Tokens(spec, spec)
    if isinstance(spec, MultipleChoiceBatch) or (
            isinstance(spec, Sequence) and spec and isinstance(spec[0], Mapping)):
        return _Tokens(spec)
    raise CalibrationError(f"calibration must be {_KINDS}; got {type(spec).__name__}.")


def _windows_batches(data: Any, batch_size: int, device: Any) -> list[dict[str, Any]]:
    """Windows, multiple-choice sequences or batch dicts as a list of batches on ``device``."""
    import torch

    from .multiple_choice import MultipleChoiceBatch
    from .windows import CalibrationWindows

    if isinstance(data, CalibrationWindows):
        return [{"input_ids": ids.to(device), "domains": list(domains)} for ids, domains in data.iter_batches(batch_size)]
    if isinstance(data, MultipleChoiceBatch):
        # Batches hold whole questions, so the margin objective sees every question's correct and wrong choices.
        out = []
        questions = data.question_index
        for start in range(0, data.num_questions, batch_size):
            rows = (questions >= start) & (questions < start + batch_size)
            out.append({k: getattr(data, k)[rows].to(device) for k in data.__dataclass_fields__})
        return out
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()} for b in data]
