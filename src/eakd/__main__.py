"""``python -m eakd`` runs the command line."""

import sys

from eakd.cli import main

sys.exit(main())
