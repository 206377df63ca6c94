"""Registers ``optimum-cli prune`` (the ``hf-prune prune`` command) through optimum's PEP 420 namespace.

optimum-cli imports every module of the ``optimum.commands.register`` namespace at start-up and registers the
classes listed in its ``REGISTER_COMMANDS``. This folder must stay without ``__init__.py`` files (namespace
packages). hf_prune itself (torch, transformers) is imported only when the command's parser is built.
"""

from __future__ import annotations

import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


class PruneCommand(BaseOptimumCLICommand):
    """``optimum-cli prune MODEL --sparsity 0.2,0.3 ...``: same options and behaviour as ``hf-prune prune``."""

    COMMAND = CommandInfo(
        name="prune",
        help="Structured pruning of Qwen2-family LLMs into dense, smaller checkpoints (hf-prune).",
    )

    @staticmethod
    def parse_args(parser):
        from hf_prune.cli import add_prune_arguments

        add_prune_arguments(parser)
        parser.prog = "optimum-cli prune"

    def run(self):
        from hf_prune.cli import run_command, run_prune

        code = run_command(self.args, func=run_prune)
        if code:
            sys.exit(code)


REGISTER_COMMANDS = [PruneCommand]
