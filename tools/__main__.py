"""``python -m graphbuild.tools``: the ``graphbuild`` command line."""

import sys

from graphbuild.tools.cli import main

sys.exit(main())
