"""``python -m listgate`` is the same as the ``listgate`` command."""

import sys

from listgate.cli import main

sys.exit(main())
