"""``python -m cujit``: see ``cujit.tools.cli``."""

from __future__ import annotations

import sys
from pathlib import Path


def _import_this_package() -> None:
    """Make ``import cujit`` mean the package this file belongs to, from whatever folder the command runs in.

    ``python -m`` puts the working folder first on ``sys.path``. Run from the folder above a clone named ``cujit``,
    the clone (which has no ``__init__.py`` at its root) is then imported as a namespace package called ``cujit``,
    and every ``cujit.<name>`` fails. The folder that holds this package goes first instead.
    """
    here = Path(__file__).resolve().parent
    loaded = sys.modules.get("cujit")
    where = getattr(loaded, "__file__", None)
    if where is not None and Path(where).resolve().parent == here:
        return
    for name in [n for n in sys.modules if n == "cujit" or n.startswith("cujit.")]:
        if sys.modules[name] is not sys.modules.get("__main__"):
            del sys.modules[name]
    sys.path.insert(0, str(here.parent))


_import_this_package()

from cujit.tools.cli import main  # noqa: E402 - the import must see the package chosen above

if __name__ == "__main__":
    sys.exit(main())
