"""``python -m hf_prune``: the ``hf-prune`` command line (and what ``torchrun ... -m hf_prune prune ...`` runs)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
