"""Reads a GGUF file's header: its metadata as Python values and its tensors as mapped bytes.

gguf-py's GGUFReader builds numpy views for every part of every field, which takes 14 s on a
151k-token vocabulary; this walks the header once with struct and maps the data with no copy.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from saguaro.errors import ModelLoadError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# GGUF value types -> struct format (0-12 in the spec; 8 is a string, 9 an array)
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
         7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    tensor_type: GGMLQuantizationType
    data: np.ndarray  # [bytes] uint8, mapped from the file

    @property
    def rows_cols(self) -> tuple[int, ...]:
        """The shape in numpy/HF order ([out, in] for a matrix)."""
        return tuple(reversed(self.shape))


class GGUFFile:
    """`fields`: metadata key -> value (str, int, float, bool, or a list of them);
    `tensors`: in file order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ModelLoadError(f"no such GGUF file: {path}") from None
        except (OSError, ValueError) as e:  # an empty file cannot be mapped
            raise ModelLoadError(f"corrupt or truncated GGUF file {path}: {e}") from None
        try:
            self.fields, self.tensors = _parse(self._map)
        except (struct.error, UnicodeDecodeError, ValueError, KeyError, OverflowError) as e:
            raise ModelLoadError(f"corrupt or truncated GGUF file {path}: {e or type(e).__name__}") from None

    def field(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


class _Cursor:
    def __init__(self, buf):
        self.buf, self.at = buf, 0

    def take(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.buf, self.at)
        self.at += struct.calcsize("<" + fmt)
        return value[0] if len(value) == 1 else value

    def string(self) -> str:
        n = self.take("Q")
        if self.at + n > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        text = self.buf[self.at:self.at + n].decode("utf-8")
        self.at += n
        return text

    def value(self, kind: int) -> Any:
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind != ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, count = self.take("I"), self.take("Q")
        if item in NUMPY:  # one read for a numeric array (the vocabulary's token types)
            dtype = np.dtype(NUMPY[item]).newbyteorder("<")
            end = self.at + count * dtype.itemsize
            if end > len(self.buf):
                raise ValueError("an array runs past the end of the file")
            values = np.frombuffer(self.buf, dtype, count, self.at).tolist()
            self.at = end
            return values
        if item == STRING:
            return self._strings(count)
        return [self.value(item) for _ in range(count)]

    def _strings(self, count: int) -> list[str]:
        """The vocabulary and merges: 300k strings, so the loop keeps to locals."""
        buf, at, unpack, out = self.buf, self.at, struct.unpack_from, []
        for _ in range(count):
            (n,) = unpack("<Q", buf, at)
            end = at + 8 + n
            if end > len(buf):
                raise ValueError("a string runs past the end of the file")
            out.append(buf[at + 8:end].decode("utf-8"))
            at = end
        self.at = at
        return out


def _parse(buf) -> tuple[dict[str, Any], list[TensorInfo]]:
    cur = _Cursor(buf)
    if bytes(buf[:4]) != MAGIC:
        raise ValueError("not a GGUF file (bad magic)")
    cur.at = 4
    version = cur.take("I")
    if version not in VERSIONS:
        raise ValueError(f"GGUF version {version} is not supported (big-endian or too new?)")
    n_tensors, n_fields = cur.take("Q"), cur.take("Q")
    fields = {}
    for _ in range(n_fields):
        key = cur.string()
        fields[key] = cur.value(cur.take("I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(cur.take("Q") for _ in range(cur.take("I")))
        infos.append((name, dims, GGMLQuantizationType(cur.take("I")), cur.take("Q")))
    align = int(fields.get("general.alignment", DEFAULT_ALIGNMENT))
    start = -(-cur.at // align) * align
    tensors = []
    for name, dims, kind, offset in infos:
        block, size = GGML_QUANT_SIZES[kind]
        elements = int(np.prod(dims, dtype=np.int64))
        nbytes = elements // block * size
        begin = start + offset
        if elements % block or begin + nbytes > len(buf):
            raise ValueError(f"tensor {name} runs past the end of the file")
        tensors.append(TensorInfo(name, dims, kind, np.frombuffer(buf, np.uint8, nbytes, begin)))
    return fields, tensors
