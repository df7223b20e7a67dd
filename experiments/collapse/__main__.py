"""``python -m experiments.collapse``: the mode-collapse experiment (``make bench-collapse``)."""

import sys

from experiments.collapse.runner import main

if __name__ == "__main__":  # not in the training worker processes (spawned)
    sys.exit(main())
