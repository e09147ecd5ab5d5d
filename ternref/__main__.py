"""``python -m ternref`` is the ``ternref`` command."""

import sys

from ternref.cli import main

sys.exit(main())
