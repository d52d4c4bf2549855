"""``python -m trayupdater``: the same as the ``trayupdater`` command."""

import sys

from trayupdater.cli import main

sys.exit(main())
