"""A local zero-shot suite built from a corpus folder, for machines without the Hub's benchmarks.

From ``CORPUS/dev/<domain>.jsonl`` (``{"text": ...}`` documents) it writes one multiple-choice task per domain,
``nextpassage_<domain>.jsonl``, HellaSwag-style: the prompt is a passage's beginning (``context_chars`` characters
ending at a line or word boundary), the right choice its true continuation (the next ``continuation_chars``), and
the three wrong ones are continuations of the same length taken from *other* documents of the same domain. A model
that follows the text (its topic, names, the code it is in the middle of) prefers the true continuation; one that
only knows the domain's style cannot tell them apart, so chance is 25%. Pruning that damages what the model
knows about a domain shows as lost accuracy there, beside that domain's perplexity.

From ``math`` records that end in ``#### N`` (GSM8K style) it also writes ``math_answer.jsonl``: the prompt is the
question and worked solution up to the final line, ``"####"``; the choices are the true final number and three
other numbers from the same record (its question and working), then small perturbations of the answer if the
record has too few. Picking the right one needs the solution to be followed to its conclusion, not just a number
that appears in the text.

Everything is deterministic: documents are visited in file order, the positions and the wrong choices come from a
generator seeded by ``(seed, domain)``, and the right choice's position is drawn too, so "always the first" scores
25%. Run it as ``python -m hf_prune.data.zero_shot CORPUS OUT``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CalibrationError

__all__ = ["build_zero_shot_suite", "next_passage_records", "math_answer_records"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _rng(seed: int, name: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _documents(path: Path) -> list[str]:
    docs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                docs.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CalibrationError(f"domain {path.stem!r}: line {i + 1} of {str(path)!r} is not a "
                                       f'{{"text": ...}} record ({err})') from None
    return docs


def _boundary(text: str, end: int) -> int:
    """``end`` moved back to just after the last newline or space before it (the prompt ends at a boundary)."""
    cut = max(text.rfind("\n", 0, end), text.rfind(" ", 0, end))
    return cut + 1 if cut > end // 2 else end


def _passages(doc: str, context_chars: int, continuation_chars: int, rng: random.Random,
              per_doc: int) -> list[tuple[str, str]]:
    """Up to ``per_doc`` (beginning, continuation) pairs from non-overlapping spans of ``doc``, cut at word or line
    boundaries; a document shorter than one span (a dialogue turn, a short mail) gives one pair, cut at its last
    line break (or a word near 60%) so the continuation is its ending (the assistant's reply)."""
    span = context_chars + continuation_chars
    if len(doc) < span:
        return _short_passage(doc.strip())
    starts = sorted(rng.sample(range(len(doc) // span), min(per_doc, len(doc) // span)))
    out = []
    for k in starts:
        piece = doc[k * span : (k + 1) * span]
        first = piece.find(" ") + 1 if k else 0  # start on a word, not mid-word
        cut = _boundary(piece, context_chars)
        end = _boundary(piece, len(piece))
        context, continuation = piece[first:cut].rstrip(), piece[cut:end].strip()
        if context.strip() and continuation:
            out.append((context, continuation))
    return out


def _short_passage(doc: str) -> list[tuple[str, str]]:
    if len(doc) < 40:
        return []
    line = doc.rfind("\n")
    cut = line + 1 if 0.3 * len(doc) <= line <= 0.8 * len(doc) else _boundary(doc, int(0.6 * len(doc)))
    context, continuation = doc[:cut].rstrip(), doc[cut:].strip()
    return [(context, continuation)] if context and continuation else []


def next_passage_records(docs: Sequence[str], domain: str, *, seed: int = 0, max_records: int = 200,
                         context_chars: int = 400, continuation_chars: int = 120, per_doc: int = 8,
                         num_choices: int = 4) -> list[dict[str, Any]]:
    """The next-passage task of one domain (see the module docstring); ``[]`` if it has fewer than
    ``num_choices`` documents long enough (wrong choices must come from other documents)."""
    rng = _rng(seed, domain)
    pairs = [(i, c, t) for i, doc in enumerate(docs) for c, t in _passages(doc, context_chars, continuation_chars,
                                                                           rng, per_doc)]
    if len({i for i, _, _ in pairs}) < num_choices:
        return []
    rng.shuffle(pairs)
    records = []
    for i, context, true in pairs[:max_records]:
        others = [t for j, _, t in pairs if j != i and t != true]
        wrong = rng.sample(others, num_choices - 1)
        records.append(_record(context, true, wrong, rng))
    return records


def _record(prompt: str, true: str, wrong: list[str], rng: random.Random) -> dict[str, Any]:
    answer = rng.randrange(len(wrong) + 1)
    choices = wrong[:answer] + [true] + wrong[answer:]
    return {"prompt": prompt, "choices": choices, "answer": answer}


def _math_distractors(answer: str, text: str, rng: random.Random, k: int) -> list[str]:
    seen = {answer}
    pool = [n for n in _NUMBER.findall(text) if not (n in seen or seen.add(n))]
    rng.shuffle(pool)
    value = float(answer)
    for factor in (2, 0.5, 10, 1.5):  # only when the record has too few numbers of its own
        candidate = value * factor + (1 if factor == 1.5 else 0)
        text_value = str(int(candidate)) if candidate == int(candidate) else f"{candidate:g}"
        if text_value not in seen:
            seen.add(text_value)
            pool.append(text_value)
    return pool[:k]


def math_answer_records(docs: Sequence[str], *, seed: int = 0, max_records: int = 200,
                        num_choices: int = 4) -> list[dict[str, Any]]:
    """Final-answer choice over GSM8K-style records ending in ``#### N`` (others are skipped)."""
    rng = _rng(seed, "math_answer")
    records = []
    for doc in docs:
        body, sep, answer = doc.strip().rpartition("####")
        answer = answer.strip().replace(",", "")
        if not sep or not _NUMBER.fullmatch(answer) or not body.strip():
            continue
        wrong = _math_distractors(answer, body, rng, num_choices - 1)
        if len(wrong) == num_choices - 1:
            records.append(_record(body.rstrip() + "\n####", answer, wrong, rng))
        if len(records) == max_records:
            break
    return records


def build_zero_shot_suite(corpus: str | Path, out_dir: str | Path, *, split: str = "dev", seed: int = 0,
                          max_records: int = 200, domains: Sequence[str] | None = None) -> dict[str, Path]:
    """Write the suite's task files (``nextpassage_<domain>.jsonl``, ``math_answer.jsonl``) into ``out_dir``.

    Args:
        corpus: a folder holding ``<split>/<domain>.jsonl`` files of ``{"text": ...}`` documents.
        max_records: questions per task at most.
        domains: only these domains (default: every file of the split).

    Returns:
        task name -> written file. A domain with too few long documents gets no task (logged in the return).

    Raises:
        CalibrationError: no such split folder, no documents, or a line that is not a ``{"text": ...}`` record.
    """
    from ..fileio import write_text_atomic

    folder = Path(corpus).expanduser() / split
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    files = [f for f in files if domains is None or f.stem in domains]
    if not files:
        raise CalibrationError(f"no {split}/<domain>.jsonl files under {str(corpus)!r}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for path in files:
        docs = _documents(path)
        tasks = {f"nextpassage_{path.stem}": next_passage_records(docs, path.stem, seed=seed, max_records=max_records)}
        if path.stem == "math":
            tasks["math_answer"] = math_answer_records(docs, seed=seed, max_records=max_records)
        for name, records in tasks.items():
            if records:
                target = Path(out_dir) / f"{name}.jsonl"
                write_text_atomic(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                written[name] = target
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_prune.data.zero_shot",
                                     description="Write the local zero-shot suite (one .jsonl task per domain, plus "
                                                 "math_answer) from CORPUS/dev/<domain>.jsonl.")
    parser.add_argument("corpus", help="folder with dev/<domain>.jsonl ({\"text\": ...} documents)")
    parser.add_argument("out", help="folder to write the task files into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-records", type=int, default=200, help="questions per task at most (default: 200)")
    args = parser.parse_args(argv)
    try:
        written = build_zero_shot_suite(args.corpus, args.out, seed=args.seed, max_records=args.max_records)
    except CalibrationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {sum(1 for _ in path.open(encoding='utf-8'))} questions -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
