"""``python -m bot.devtools.localpg``: the private cluster's command line (see the package docstring)."""

import sys

from bot.devtools.localpg import main

sys.exit(main())
