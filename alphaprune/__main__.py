"""`python -m alphaprune ...`: see alphaprune/cli.py."""

from alphaprune.cli import main

raise SystemExit(main())
