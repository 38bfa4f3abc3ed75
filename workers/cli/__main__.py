"""`python -m workers.cli`: the `tagsweeper` command without the console script."""

import sys

from workers.cli import main

sys.exit(main())
