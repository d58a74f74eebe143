"""`python -m saguaro.quant.native`: build the CPU kernels now (scripts/setup.sh does), so that no
first run waits for a compiler. Exits 1 where they cannot be built (the engine then uses PyTorch's)."""

import logging
import sys

from saguaro.quant.native.build import isa, load_kernels

logging.basicConfig(level=logging.INFO, format="%(message)s")
if not load_kernels():
    sys.exit(1)
logging.getLogger(__name__).info("Saguaro's CPU kernels are built (%s)", isa())
