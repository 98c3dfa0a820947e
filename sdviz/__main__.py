"""`python -m sdviz ...` is the `sdviz` command."""

import sys

from sdviz.cli import main

sys.exit(main())
