"""``python -m pyslab.cli``: the same as the ``pyslab`` command."""

import sys

from . import main

sys.exit(main())
