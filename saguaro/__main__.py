"""Lets `python -m saguaro` run the command line, the same as the `saguaro` script.

All the work is in saguaro.cli.main.
"""

import sys

from saguaro.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
