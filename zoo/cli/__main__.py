"""``python -m zoo.cli`` (and ``torchrun -m zoo.cli``) runs the ``lilnetx`` command line."""

import sys

from zoo.cli import main

sys.exit(main())
