"""``python -m ct2mri_node`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
