"""``python -m experiments.collapse``: the mode-collapse experiment (``make bench-collapse``)."""

import sys

from experiments.collapse.runner import main

sys.exit(main())
