"""``python -m coordlab`` runs the command-line interface."""

import sys

from coordlab.runners.cli import main

sys.exit(main())
