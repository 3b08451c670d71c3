"""`python -m alphaprune ...`: see alphaprune/cli.py."""

import signal

from alphaprune.cli import main

code = main()
# The work is done and written: a Ctrl-C while the interpreter shuts down changes nothing,
# and would otherwise end the process by the signal (exit -2) instead of with `code`.
signal.signal(signal.SIGINT, signal.SIG_IGN)
raise SystemExit(code)
