"""``python -m semlink.cli`` (and ``torchrun ... -m semlink.cli``): the ``semlink`` command."""

import sys

from semlink.cli import main

sys.exit(main())
