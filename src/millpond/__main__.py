"""``python -m millpond``: the same as the ``millpond`` console script."""

import sys

from millpond.cli import main

sys.exit(main())
