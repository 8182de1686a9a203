"""Read a GGUF file: its metadata as Python values and its tensors as memory-mapped numpy views, plus torch
dequantization of the simple block types.

Written from the format's specification (ggml's docs/gguf.md: little-endian header, typed key/value pairs, tensor
infos, aligned data) rather than with gguf-py's `GGUFReader`, because that reader builds a numpy memmap view for every
element of every metadata array: SmolLM2's 49,152-token vocabulary and 48,900 merges make ~1.2M views and 6.4 s per
load on this 2-core machine, where `struct` reads the same values in a fraction of a second (`engine.load` of SmolLM2
went from 16.9 s to 4.6 s, measured beside other jobs). The gguf package still names the tensor types and their
block sizes, lays out the tensor views as its reader does (so `gguf.quants.dequantize` takes them) and dequantizes
the types without a torch path here.

Q8_0, Q4_0 and Q4_1 (ggml's block layouts: 32 weights per block, an fp16 scale `d`, for Q4_1 an fp16 minimum `m`,
then the quants; a Q4 block keeps weights 0-15 in the low nibbles and 16-31 in the high ones) dequantize with torch
(vectorized, ~10x gguf.quants' numpy path); tests compare both on real files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_MAGIC = b"GGUF"
# GGUFValueType: scalar struct formats (STRING = 8 and ARRAY = 9 are read apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
          10: np.uint64, 11: np.int64, 12: np.float64}


class GGUFFormatError(ValueError):
    """Not a GGUF file this reader understands (bad magic, big-endian, truncated, unknown value type)."""


@dataclass
class GGUFTensor:
    name: str
    tensor_type: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order (fastest dimension first), as in the file
    data: np.ndarray  # memory-mapped view: float/int types in numpy order, block types as bytes per row


class GGUFFile:
    """`fields`: {key: value} (strings, numbers, bools, lists); `tensors`: [GGUFTensor] in file order."""

    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        if self.path.stat().st_size < 24:  # magic, version and the two counts
            raise GGUFFormatError(f"{self.path}: {self.path.stat().st_size} bytes is too short for a GGUF header")
        self._mm = np.memmap(self.path, mode="r")
        buf = memoryview(self._mm)
        self._buf, self._pos = buf, 0
        if bytes(buf[:4]) != _MAGIC:
            raise GGUFFormatError(f"{self.path}: not a GGUF file (magic {bytes(buf[:4])!r})")
        self._pos = 4
        version = self._unpack("<I")
        if version > 0xFFFF:
            raise GGUFFormatError(f"{self.path}: a big-endian GGUF (or version {version}): not supported")
        if version < 2:
            raise GGUFFormatError(f"{self.path}: GGUF version {version} is not supported (2 or later)")
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        self.fields = {}
        for _ in range(n_kv):
            key = self._string()
            self.fields[key] = self._value(self._unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = tuple(self._unpack("<Q") for _ in range(self._unpack("<I")))
            infos.append((name, dims, self._unpack("<I"), self._unpack("<Q")))
        align = int(self.fields.get("general.alignment", 32))
        start = -(-self._pos // align) * align
        self.tensors = []
        for name, dims, raw_type, offset in infos:
            qtype = gguf.GGMLQuantizationType(raw_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            n = int(np.prod(dims)) if dims else 1
            np_shape = tuple(reversed(dims))
            dtype = {gguf.GGMLQuantizationType.F16: np.float16, gguf.GGMLQuantizationType.F32: np.float32,
                     gguf.GGMLQuantizationType.F64: np.float64, gguf.GGMLQuantizationType.I8: np.int8,
                     gguf.GGMLQuantizationType.I16: np.int16, gguf.GGMLQuantizationType.I32: np.int32,
                     gguf.GGMLQuantizationType.I64: np.int64}.get(qtype)
            if dtype is None:
                dtype, np_shape = np.uint8, gguf.quants.quant_shape_to_byte_shape(np_shape, qtype)
            n_bytes = n * type_size // block
            lo = start + offset
            if lo + n_bytes > len(self._mm):
                raise GGUFFormatError(f"{self.path}: tensor {name} runs past the end of the file (truncated?)")
            data = self._mm[lo:lo + n_bytes].view(dtype).reshape(np_shape)
            self.tensors.append(GGUFTensor(name, qtype, dims, data))
        del self._buf

    # ---- the metadata section
    def _unpack(self, fmt: str):
        try:
            (v,) = struct.unpack_from(fmt, self._buf, self._pos)
        except struct.error:
            raise GGUFFormatError(f"{self.path}: truncated metadata at byte {self._pos}") from None
        self._pos += struct.calcsize(fmt)
        return v

    def _string(self) -> str:
        n = self._unpack("<Q")
        if self._pos + n > len(self._buf):
            raise GGUFFormatError(f"{self.path}: truncated string at byte {self._pos}")
        s = str(self._buf[self._pos:self._pos + n], "utf-8", errors="replace")
        self._pos += n
        return s

    def _value(self, vtype: int):
        if vtype in _SCALARS:
            return self._unpack("<" + _SCALARS[vtype])
        if vtype == 8:
            return self._string()
        if vtype != 9:
            raise GGUFFormatError(f"{self.path}: unknown metadata value type {vtype} at byte {self._pos}")
        sub, count = self._unpack("<I"), self._unpack("<Q")
        if sub in _NUMPY:  # numbers in one read
            size = np.dtype(_NUMPY[sub]).itemsize * count
            if self._pos + size > len(self._buf):
                raise GGUFFormatError(f"{self.path}: truncated array at byte {self._pos}")
            out = np.frombuffer(self._buf, _NUMPY[sub], count, self._pos).tolist()
            self._pos += size
            return out
        return [self._value(sub) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------- dequantize
def _halves(raw: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 value at byte `at` of each block (rows of `raw`), as float32."""
    return raw[:, at:at + 2].contiguous().view(torch.float16).float()


def dequantize(t: GGUFTensor) -> torch.Tensor:
    """The tensor as float32 in torch order (reversed ggml dims): torch for F32/F16/BF16/Q8_0/Q4_0/Q4_1, gguf.quants
    for the other block types."""
    import gguf

    Q = gguf.GGMLQuantizationType
    shape = tuple(reversed(t.shape))
    if t.tensor_type in (Q.F32, Q.F16):
        return torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(shape)
    if t.tensor_type == Q.BF16:
        raw = torch.from_numpy(np.array(t.data)).view(torch.bfloat16)
        return raw.float().reshape(shape)
    if t.tensor_type not in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
        return torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type),
                                                     dtype=np.float32)).reshape(shape)
    _, type_size = gguf.GGML_QUANT_SIZES[t.tensor_type]
    raw = torch.from_numpy(np.array(t.data)).reshape(-1, type_size)  # one row per block of 32
    d = _halves(raw, 0)
    if t.tensor_type == Q.Q8_0:
        q = raw[:, 2:].contiguous().view(torch.int8).float()
        return (q * d).reshape(shape)
    qs = raw[:, -16:]
    q = torch.cat([qs & 0xF, qs >> 4], dim=1).float()  # weights 0-15, then 16-31
    if t.tensor_type == Q.Q4_0:
        return ((q - 8) * d).reshape(shape)
    return (q * d + _halves(raw, 2)).reshape(shape)
