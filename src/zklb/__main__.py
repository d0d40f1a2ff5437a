"""``python -m zklb`` runs the ``zklb`` command."""

import sys

from zklb.cli import main

sys.exit(main())
