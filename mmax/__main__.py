"""``python -m mmax``: the same as the ``mmax`` command."""
import sys

from mmax.cli import main

sys.exit(main())
