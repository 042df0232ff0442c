"""``python -m nextstate``: same as the ``nextstate`` command."""

import sys

from nextstate.cli import main

sys.exit(main())
