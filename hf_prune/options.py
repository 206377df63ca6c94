"""What the option dataclasses (:class:`~hf_prune.PruneConfig`, :class:`~hf_prune.RecoveryConfig`) share.

Fields carry their help text in metadata (the command line and the docs/reference tables are generated from
it); ``validate()`` runs every ``validate_*`` method, as transformers' strict config dataclasses do; unknown names
are refused with the class's own exception. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any, ClassVar

__all__ = ["option", "is_int", "is_number", "parse_bytes", "parse_count", "Options"]


def option(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with its help text and any extra metadata (``flag``, ``cli``, ``nested``)."""
    return field(default=default, metadata={"help": help, **extra})


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


_NUMBER = r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*"
#: Count suffixes (parameters): thousand, million, billion (B and G alike), trillion.
_COUNT_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_bytes(value: Any) -> int:
    """Bytes of ``"12GiB"`` (binary), ``"80GB"`` / ``"80G"`` (decimal), ``"512MiB"`` or a number (bytes).

    Raises:
        ValueError: not a size, or in a unit this does not know (the message says what to give).
    """
    if is_number(value):
        return int(value)
    match = re.fullmatch(_NUMBER + r"([KMGT]i?B?|B)?\s*", str(value), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"not a memory size: {value!r} (give e.g. 12GiB, 80GB, 512MiB or a number of bytes)")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    base = 1024 if "I" in unit or unit == "B" else 1000
    return int(number * base**power)


def parse_count(value: Any) -> int:
    """A count of ``"5B"`` (billion), ``"500M"``, ``"1.5K"``, ``5e9`` or ``"5e9"``.

    Raises:
        ValueError: not a count, or in a unit this does not know.
    """
    if is_number(value):
        return int(value)
    match = re.fullmatch(_NUMBER + r"([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).upper() not in _COUNT_UNITS:
        raise ValueError(f"not a parameter count: {value!r} (give e.g. 5B, 500M, 1.5K or 5e9)")
    return int(round(float(match.group(1)) * _COUNT_UNITS[match.group(2).upper()]))


class Options:
    """Mixin for the option dataclasses: checks, ``replace`` and unknown-name refusal.

    Subclasses set ``error`` (the exception raised) and ``label`` (how messages name an option: ``"recovery "``
    gives "recovery seq_len must ...").
    """

    error: ClassVar[type[Exception]] = ValueError
    label: ClassVar[str] = ""
    title: ClassVar[str] = "option"

    def validate(self) -> None:
        """Run every ``validate_*`` check (done at construction and by :meth:`replace`)."""
        for name in sorted(dir(self)):
            if name.startswith("validate_"):
                getattr(self, name)()

    def check_numbers(self, checks: Iterable[tuple[str, Callable[[Any], bool], str]],
                      optional: Iterable[str] = ()) -> None:
        """Each ``(field, ok, rule)``: a finite number with ``ok(value)`` (``rule`` says how); ``optional``: may be None."""
        optional = set(optional)
        for name, ok, rule in checks:
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if not is_number(value) or not ok(value):
                raise self.error(f"{self.label}{name} must be a number {rule}, got {value!r}.")

    def check_ints(self, names: Iterable[str], minimum: int | None, optional: Iterable[str] = ()) -> None:
        """Each named field must be an integer >= ``minimum`` (any integer if None); ``optional``: may be None."""
        optional = set(optional)
        for name in names:
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if not is_int(value) or (minimum is not None and value < minimum):
                rule = {None: "an integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
                raise self.error(f"{self.label}{name} must be {rule}, got {value!r}.")

    @classmethod
    def check_known(cls, values: Mapping[str, Any]) -> None:
        """Refuse names that are not fields, listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise cls.error(f"unknown {cls.title}(s) {unknown}; known: {sorted(known)}.")

    def replace(self, **overrides: Any):
        """A copy with some fields changed (checked again); an unknown name raises the class's error."""
        self.check_known(overrides)
        return dataclasses.replace(self, **overrides)
