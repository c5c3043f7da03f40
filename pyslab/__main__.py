"""``python -m pyslab``: the pyslab command line."""

from pyslab.cli import main

raise SystemExit(main())
