"""``python -m circuitfind`` is the ``circuitfind`` command."""

import sys

from circuitfind.cli import main

sys.exit(main())
