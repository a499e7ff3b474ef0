"""``python -m fnn``: see :mod:`fnn.cli`."""

import sys

from .cli import main

sys.exit(main())
