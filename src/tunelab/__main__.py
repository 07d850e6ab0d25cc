"""`python -m tunelab`: see tunelab/commands."""

import sys

from tunelab.commands import main

sys.exit(main())
