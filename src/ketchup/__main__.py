"""`python -m ketchup`: the same as the `ketchup` command (what the workflow's rules run)."""

import sys

from ketchup.cli import main

sys.exit(main())
