"""Saguaro's own CPU kernels for quantized linears, and the choice between them and PyTorch's.

PyTorch's weight-only kernels multiply in the activation dtype and stream int4 at about half
the memory bandwidth; these multiply int8-rounded activations by the codes in integers (AVX512
VNNI or AVX2 byte dot products, a portable loop elsewhere). They are C++ built on first use.
`SAGUARO_QUANT_KERNELS` (auto, native, torch) forces a path, so tests cover both on any machine.
"""

from __future__ import annotations

import os

from saguaro.errors import UnsupportedEnvironmentError
from saguaro.quant.native.build import load_kernels

KERNELS_ENV = "SAGUARO_QUANT_KERNELS"
KERNEL_CHOICES = ("auto", "native", "torch")


def requested_kernels() -> str:
    choice = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNEL_CHOICES:
        raise UnsupportedEnvironmentError(f"{KERNELS_ENV}={choice!r} is not one of {', '.join(KERNEL_CHOICES)}")
    return choice


def use_native() -> bool:
    """auto: the native kernels where they build; native: those or a one-line error; torch: never."""
    choice = requested_kernels()
    if choice == "torch":
        return False
    if load_kernels():
        return True
    if choice == "native":
        raise UnsupportedEnvironmentError(
            f"{KERNELS_ENV}=native, but Saguaro's CPU kernels could not be built here (see the warning "
            f"above: a C++ compiler and ninja are needed); use {KERNELS_ENV}=auto")
    return False
