"""`python -m streams` is the `walstream` command."""

import sys

from streams.tools.cli import main

sys.exit(main())
