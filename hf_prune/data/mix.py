"""``CalibrationMix``: which domains calibrate (or evaluate) a model, where their text comes from, and how
much each weighs.

Importance estimated on a *hybrid* set that mixes several domains generalises better than any single
domain; this module is the spec of such a mix. Forms accepted::

    CalibrationMix({"web": 0.3, "code": 0.3, "math": 0.2, "dialogue": 0.2})        # preset names
    CalibrationMix({"code": {"source": "data/code.jsonl", "weight": 0.5}, "web": 0.5})  # local override
    CalibrationMix({"code": "data/code/"})                                          # source, weight 1
    CalibrationMix.parse("web=0.3,code=data/code.jsonl@0.7")                        # CLI --calibration
    CalibrationMix.from_file("mix.yaml")                                            # YAML or JSON
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CalibrationError
from ..options import is_number
from .sources import DomainSource, source_fields

if TYPE_CHECKING:
    from .windows import CalibrationWindows

__all__ = ["PRESETS", "CalibrationMix"]

#: Public Hugging Face datasets for the usual domains (for users with Hub access). Large ones stream, with
#: a token budget, so that a calibration run never downloads a whole corpus. A local source given under the
#: same name replaces the preset.
PRESETS: dict[str, dict[str, Any]] = {
    "encyclopedic": {"source": "wikimedia/wikipedia", "config": "20231101.en", "split": "train", "streaming": True},
    "web": {"source": "allenai/c4", "config": "en", "split": "train", "streaming": True},
    "code": {
        "source": "codeparrot/codeparrot-clean-valid",
        "split": "train",
        "text_field": "content",
        "streaming": True,
    },
    "math": {"source": "openai/gsm8k", "config": "main", "split": "train", "text_field": ["question", "answer"]},
    "dialogue": {"source": "HuggingFaceH4/ultrachat_200k", "split": "train_sft", "chat": True, "streaming": True},
    "instructions": {"source": "tatsu-lab/alpaca", "split": "train", "text_field": "text"},
    "zh": {"source": "wikimedia/wikipedia", "config": "20231101.zh", "split": "train", "streaming": True},
}


def _weight(name: str, value: Any) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"domain {name!r}: weight {value!r} is not a number") from None
    if not math.isfinite(w) or w < 0:
        raise CalibrationError(f"domain {name!r}: weight must be a finite number >= 0, got {value!r}")
    return w


def _domain_from_spec(name: str, value: Any, base_dir: Path | None = None) -> DomainSource:
    """Build one :class:`DomainSource` from a weight, a source string, or a mapping of fields."""
    if not isinstance(name, str) or not name.strip():
        raise CalibrationError(f"domain names must be non-empty strings, got {name!r}")
    if isinstance(value, DomainSource):
        return value if value.name == name else DomainSource(**{**_fields_of(value), "name": name})
    if is_number(value) or isinstance(value, float):  # a non-finite float is refused by _weight, which names it
        spec: dict[str, Any] = {"weight": value}
    elif isinstance(value, (str, os.PathLike)):
        spec = {"source": os.fspath(value)}
    elif isinstance(value, Mapping):
        spec = dict(value)
    else:
        raise CalibrationError(
            f"domain {name!r}: expected a weight, a source or a mapping, got {type(value).__name__}"
        )
    allowed = set(source_fields())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise CalibrationError(f"domain {name!r}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")

    if spec.get("source") in (None, ""):
        if name not in PRESETS:
            raise CalibrationError(
                f"domain {name!r}: unknown preset and no source given; presets are {sorted(PRESETS)}; "
                f"otherwise give a source, e.g. {name}=path/to/{name}.jsonl"
            )
        # Preset fields first; the user's (weight, max_tokens...) on top.
        spec = {**PRESETS[name], **{k: v for k, v in spec.items() if k != "source"}}
    # else: an explicit source replaces the preset entirely: a local file has no Hub config/split to inherit.

    source = os.fspath(spec["source"])
    if base_dir is not None and not os.path.isabs(os.path.expanduser(source)) and (base_dir / source).exists():
        source = str(base_dir / source)  # paths in a mix file are relative to that file
    spec["source"] = source
    spec["weight"] = _weight(name, spec.get("weight", 1.0))
    tf = spec.get("text_field")
    if isinstance(tf, list):
        spec["text_field"] = tuple(tf)
    elif tf is not None and not isinstance(tf, (str, tuple)):
        raise CalibrationError(f"domain {name!r}: text_field must be a column name or a list of them, got {tf!r}")
    if spec.get("max_tokens") is not None and int(spec["max_tokens"]) < 1:
        raise CalibrationError(f"domain {name!r}: max_tokens must be >= 1, got {spec['max_tokens']!r}")
    return DomainSource(name=name, **spec)


def _fields_of(src: DomainSource) -> dict[str, Any]:
    return {f: getattr(src, f) for f in ("name", *source_fields())}


class CalibrationMix:
    """A weighted set of text domains for calibration (or, with any weights, for evaluation).

    Args:
        spec: ``{domain: weight | source | {field: value}}`` (see the module docstring), or a sequence of
            :class:`DomainSource`. Mapping fields: ``source``, ``weight``, ``text_field``, ``config``,
            ``split``, ``chat``, ``streaming``, ``max_tokens``, ``revision``.

    Raises:
        CalibrationError: unknown preset, bad weight, weights summing to zero, unknown fields, empty mix.
    """

    def __init__(
        self,
        spec: Mapping[str, Any] | Sequence[DomainSource] | CalibrationMix,
        *,
        _base_dir: Path | None = None,
    ) -> None:
        if isinstance(spec, CalibrationMix):
            sources = list(spec.sources)
        elif isinstance(spec, Mapping):
            # Accept the {"domains": {...}} envelope that to_dict()/mix files use.
            if set(spec) == {"domains"} and isinstance(spec["domains"], Mapping):
                spec = spec["domains"]
            sources = [_domain_from_spec(k, v, _base_dir) for k, v in spec.items()]
        else:
            sources = [s if isinstance(s, DomainSource) else _bad_item(s) for s in spec]
        if not sources:
            raise CalibrationError("the calibration mix names no domains")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise CalibrationError(f"domain names repeat in the mix: {names}")
        total = math.fsum(s.weight for s in sources)
        if not total > 0:
            raise CalibrationError(f"the weights of domains {names} sum to {total:g}; at least one must be > 0")
        # Normalised once here so to_dict() states the actual shares.
        self.sources: tuple[DomainSource, ...] = tuple(s.with_weight(s.weight / total) for s in sources)

    # ---- construction helpers ----------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> CalibrationMix:
        """Parse the CLI form: ``"web=0.3,code=0.3"``, ``"code=data/code.jsonl@0.5,math=0.5"``, ``"web,code"``.

        Each comma-separated item is ``domain`` (preset, weight 1), ``domain=weight`` (preset),
        ``domain=source`` (weight 1) or ``domain=source@weight``. A path to a ``.yaml``/``.json`` file is
        read with :meth:`from_file`.
        """
        text = text.strip()
        if not text:
            raise CalibrationError("empty calibration spec")
        if Path(text).suffix.lower() in {".yaml", ".yml", ".json"} and "=" not in text:
            return cls.from_file(text)
        spec: dict[str, Any] = {}
        for item in (p.strip() for p in text.split(",")):
            if not item:
                continue
            name, sep, value = item.partition("=")
            name = name.strip()
            if name in spec:
                raise CalibrationError(f"domain {name!r} is given twice in {text!r}")
            if not sep:
                spec[name] = 1.0
                continue
            value = value.strip()
            source, at, weight = value.rpartition("@")
            if at:
                spec[name] = {"source": source, "weight": weight}
            elif _is_number(value):
                spec[name] = float(value)
            else:
                spec[name] = {"source": value}
        return cls(spec)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CalibrationMix:
        """Read a mix from YAML (``.yaml``/``.yml``) or JSON: ``{domain: ...}`` or ``{"domains": {...}}``.

        Relative sources are resolved against the file's folder when they exist there.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise CalibrationError(f"calibration mix file {str(p)!r} does not exist")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise CalibrationError(f"calibration mix file {str(p)!r} is not valid: {exc}") from exc
        if not isinstance(data, Mapping):
            raise CalibrationError(f"calibration mix file {str(p)!r} must hold a mapping of domains")
        return cls(data, _base_dir=p.parent)

    # ---- views -------------------------------------------------------------------------------------
    @property
    def domains(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def weights(self) -> dict[str, float]:
        """Normalised weights (sum to 1)."""
        return {s.name: s.weight for s in self.sources}

    def __getitem__(self, name: str) -> DomainSource:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def __iter__(self) -> Iterator[DomainSource]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CalibrationMix) and self.sources == other.sources

    def __repr__(self) -> str:
        return "CalibrationMix({" + ", ".join(f"{s.name!r}: {s.weight:.3g}" for s in self.sources) + "})"

    def to_dict(self) -> dict[str, Any]:
        """``{"domains": {name: {source, weight, ...}}}``; ``CalibrationMix(mix.to_dict()) == mix``."""
        return {"domains": {s.name: s.to_dict() for s in self.sources}}

    def to_public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` as published: local sources by file name and checksum, no local paths
        (:meth:`~hf_prune.data.sources.DomainSource.to_public_dict`)."""
        return {"domains": {s.name: s.to_public_dict() for s in self.sources}}

    # ---- data --------------------------------------------------------------------------------------
    def sample(
        self,
        tokenizer: Any,
        num_samples: int,
        seq_len: int,
        seed: int = 0,
        *,
        cache: bool | str | os.PathLike[str] = True,
    ) -> CalibrationWindows:
        """Draw ``num_samples`` packed windows of ``seq_len`` tokens, split among domains by weight.

        Deterministic in ``seed``; another seed draws other windows (the iterative pruner uses
        ``base_seed + step``). See :func:`hf_prune.data.windows.sample_windows`.
        """
        from .windows import sample_windows

        return sample_windows(
            self.sources, tokenizer, num_samples, seq_len, seed=seed, cache=cache, spec=self.to_dict()
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bad_item(item: Any) -> DomainSource:
    raise CalibrationError(f"expected DomainSource items in the mix, got {type(item).__name__}")
