"""Lets `python -m saguaro` run the command line, the same as the `saguaro` script.

All the work is in saguaro.cli.main.
"""

import sys

try:
    from saguaro.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the interpreter imports: no traceback
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
