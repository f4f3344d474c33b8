"""``python -m cujit``: see ``cujit.tools.cli``."""

from __future__ import annotations

import sys

from cujit.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
