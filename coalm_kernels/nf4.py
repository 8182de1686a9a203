"""NF4 (4-bit NormalFloat) weights in the exact QLoRA / bitsandbytes format, and their dequantization.

Format (bitsandbytes `quantize_4bit(quant_type="nf4", compress_statistics=True)`, QuantState layout):
  - the weight is flattened (row-major) and cut into blocks of `blocksize` (default 64) values; the last
    block may be short. Each block keeps absmax_b = max|w| over the block, and each value the index of the
    nearest entry of the 16-value NF4 code book (`NF4_CODE`, quantiles of N(0, 1) scaled to [-1, 1]) to
    w / absmax_b. Ties go to the lower code; an odd count is padded with the code of 0.0 (index 7).
  - two codes per byte, the first (even flat index) in the high nibble: packed[i] = c[2i] << 4 | c[2i + 1].
  - double quantization of the absmaxes: offset = mean(absmax); (absmax - offset) is quantized blockwise
    (blocks of 256, again the last may be short) to 8-bit indices into bitsandbytes' signed dynamic map
    (`code2`, 256 fp32 values) with one fp32 absmax2 per 256-block.
Dequantization (every product and sum rounded to fp32 in this order, which makes it bit-exact with
bitsandbytes): absmax_b = code2[qabsmax_b] * absmax2[b // 256] + offset;
w = NF4_CODE[c] * absmax_b, rounded (to nearest even) to the output dtype.
A weight without double quantization (compress_statistics=False) is also accepted: its absmax is fp32.

`NF4Weight` is a plain dataclass of tensors; `from_bnb` / `to_bnb` convert to and from
`bitsandbytes.functional.QuantState`. On CPU, `dequantize_nf4` runs the compiled op `coalm_kernels.native.nf4_dequantize`
(AVX-512 / AVX2 / scalar, bit-exact with the reference below). The Triton kernel is memory bound: one program dequantizes ROWS
quantization blocks, reading 0.5 B + 1/blocksize B per weight and writing 2 or 4 B. Limits: blocksize a
power of two in [32, 4096]; fewer than 2**31 bytes of packed codes per weight. `_nf4_tile` is shared with
`coalm_kernels.lora_matmul`, which dequantizes tiles of W inside its matmul loops.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from coalm_kernels import native
from coalm_kernels._dispatch import HAS_TRITON, use_triton
from coalm_kernels.plan import Config, Launch, arch_of, family, need, run

if HAS_TRITON:
    import triton
    import triton.language as tl

# The NF4 code book, as stored (fp32) by bitsandbytes and in QLoRA checkpoints.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCKSIZE2 = 256  # blocks of the double quantization, fixed by bitsandbytes


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map()`): for each exponent e in 0..6,
    +-10**(e - 6) times the midpoints of 2**e + 1 points spaced evenly on [0.1, 1]; then 0 and 1; sorted."""
    values = [0.0, 1.0]
    for e in range(7):
        pts = torch.linspace(0.1, 1, 2**e + 1, dtype=torch.float32)
        mids = (pts[:-1] + pts[1:]) / 2.0
        values += ((10 ** (e - 6)) * mids).tolist() + ((-(10 ** (e - 6))) * mids).tolist()  # fp32 products
    return torch.tensor(sorted(values), dtype=torch.float32)


@dataclass
class NF4Weight:
    """An NF4-quantized weight: the tensors of a bitsandbytes QuantState plus the packed codes."""

    packed: torch.Tensor  # uint8 (ceil(numel / 2),): two codes per byte, high nibble first
    absmax: torch.Tensor  # uint8 (n_blocks,) when double-quantized, else fp32
    code: torch.Tensor  # fp32 (16,): NF4_CODE
    shape: torch.Size
    dtype: torch.dtype  # the dtype of the original weight; the default dequantization dtype
    blocksize: int = 64
    absmax2: torch.Tensor | None = None  # fp32 (ceil(n_blocks / 256),)
    code2: torch.Tensor | None = None  # fp32 (256,): the dynamic map the absmaxes are coded in
    offset: torch.Tensor | None = None  # fp32 scalar: mean of the absmaxes

    @property
    def double_quant(self) -> bool:
        return self.absmax2 is not None

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def numel(self) -> int:
        return self.shape.numel()

    def to(self, device) -> NF4Weight:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device)
        return NF4Weight(**moved)

    @classmethod
    def from_bnb(cls, packed: torch.Tensor, quant_state) -> NF4Weight:
        """From the output of `bitsandbytes.functional.quantize_4bit(..., quant_type="nf4")`."""
        if quant_state.quant_type != "nf4":
            raise ValueError(f"NF4Weight.from_bnb: quant_type is {quant_state.quant_type!r}; only 'nf4' is supported")
        qs, nested = quant_state, quant_state.nested
        if nested and qs.state2.blocksize != _BLOCKSIZE2:
            raise ValueError(f"NF4Weight.from_bnb: nested blocksize {qs.state2.blocksize}, expected {_BLOCKSIZE2}")
        return cls(
            packed=packed.reshape(-1).view(torch.uint8),
            absmax=qs.absmax,
            code=qs.code.float(),
            shape=torch.Size(qs.shape),
            dtype=qs.dtype,
            blocksize=int(qs.blocksize),
            absmax2=qs.state2.absmax.float() if nested else None,
            code2=qs.state2.code.float() if nested else None,
            offset=qs.offset.float().reshape(()) if nested else None,
        )

    def to_bnb(self):
        """(packed, QuantState) as `bitsandbytes.functional.quantize_4bit` returns them."""
        try:
            from bitsandbytes.functional import QuantState
        except ImportError as e:  # pragma: no cover
            raise ImportError("NF4Weight.to_bnb needs the bitsandbytes package (pip install bitsandbytes)") from e
        state2 = None
        if self.double_quant:
            state2 = QuantState(absmax=self.absmax2, code=self.code2, blocksize=_BLOCKSIZE2, dtype=torch.float32)
        qs = QuantState(
            absmax=self.absmax, shape=self.shape, code=self.code, blocksize=self.blocksize, quant_type="nf4",
            dtype=self.dtype, offset=self.offset, state2=state2,
        )  # fmt: skip
        return self.packed.reshape(-1, 1), qs


if HAS_TRITON:

    @triton.jit
    def _absmax(blk, mask, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, BS2: tl.constexpr, DOUBLE: tl.constexpr):
        """fp32 absmax of quantization blocks `blk`. Launch with enable_fp_fusion=False: a fused
        multiply-add here would round once where bitsandbytes rounds twice."""
        if DOUBLE:
            q = tl.load(absmax_ptr + blk, mask=mask, other=0).to(tl.int32)
            s = tl.load(absmax2_ptr + blk // BS2, mask=mask, other=0.0)
            return tl.load(code2_ptr + q) * s + tl.load(offset_ptr)
        else:
            return tl.load(absmax_ptr + blk, mask=mask, other=0.0)

    @triton.jit
    def _nf4_tile(r0, c0, n_rows, n_cols, packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr,
                  BR: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr, BS2: tl.constexpr, DOUBLE: tl.constexpr,
                  ALIGNED: tl.constexpr):
        """The fp32 tile W[r0:r0+BR, c0:c0+BC] (zero outside n_rows x n_cols) of a row-major NF4 matrix.

        ALIGNED (n_cols % BS == 0, c0 % BC == 0, and BC % BS == 0 or BS % BC == 0): quantization blocks lie inside
        rows, so each byte is read once and one absmax serves min(BS, BC) values of a tile row (a tile row inside
        one larger block reads a single absmax). Otherwise every value is gathered on its own, with its own
        absmax lookups: far more live registers, which is why the launch plans prefer the aligned path.
        Only the tile origin is 64-bit; offsets inside the tile and block indices (< numel / 32) are 32-bit,
        which keeps the per-element index arithmetic (and registers) at half the cost.
        """
        lr = tl.arange(0, BR)
        rows_ok = r0 + lr < n_rows
        if ALIGNED:
            NB: tl.constexpr = (BC + BS - 1) // BS  # blocks per tile row (powers of two: 1 when BS >= BC)
            VB: tl.constexpr = BC // NB  # values of one block within a tile row
            lb = tl.arange(0, NB)  # block within the tile row
            kb = (c0 + lb * VB) // BS
            blk = (r0 + lr)[:, None] * (n_cols // BS) + kb[None, :]  # [BR, NB]
            bmask = rows_ok[:, None] & (c0 + lb[None, :] * VB < n_cols)
            origin = packed_ptr + tl.cast(r0, tl.int64) * (n_cols // 2) + c0 // 2
            local = (lr[:, None] * (n_cols // 2) + lb[None, :] * (VB // 2))[:, :, None] + tl.arange(0, VB // 2)
            byte = tl.load(origin + local, mask=bmask[:, :, None], other=0)  # [BR, NB, VB / 2]
            scale = _absmax(blk, bmask, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, BS2, DOUBLE)
            scale = tl.where(bmask, scale, 0.0)[:, :, None]
            hi = tl.load(code_ptr + (byte >> 4).to(tl.int32)) * scale
            lo = tl.load(code_ptr + (byte & 15).to(tl.int32)) * scale
            return tl.reshape(tl.join(hi, lo), (BR, BC))  # high nibble first
        else:
            lc = tl.arange(0, BC)
            mask = rows_ok[:, None] & (c0 + lc[None, :] < n_cols)
            base = tl.cast(r0, tl.int64) * n_cols + c0  # flat index of the tile origin
            par = (base % 2).to(tl.int32)
            local = lr[:, None] * n_cols + lc[None, :] + par  # flat offset from the even index base - par
            byte = tl.load(packed_ptr + base // 2 + local // 2, mask=mask, other=0)
            nib = tl.where(local % 2 == 0, byte >> 4, byte & 15).to(tl.int32)
            blk = (base // BS).to(tl.int32) + ((base % BS).to(tl.int32) - par + local) // BS
            scale = _absmax(blk, mask, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, BS2, DOUBLE)
            return tl.where(mask, tl.load(code_ptr + nib) * scale, 0.0)

    @triton.jit
    def _dequant_kernel(packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, out_ptr, n,
                        BS: tl.constexpr, BS2: tl.constexpr, ROWS: tl.constexpr, DOUBLE: tl.constexpr,
                        BF16_BITS: tl.constexpr):
        # Program p handles quantization blocks [p * ROWS, (p + 1) * ROWS), viewed as ROWS rows of BS values.
        blk = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        j = tl.arange(0, BS // 2)
        byte_idx = blk[:, None] * (BS // 2) + j[None, :]  # [ROWS, BS / 2]
        byte = tl.load(packed_ptr + byte_idx, mask=byte_idx * 2 < n, other=0)
        scale = _absmax(blk, blk * BS < n, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, BS2, DOUBLE)[:, None]
        hi = tl.load(code_ptr + (byte >> 4).to(tl.int32)) * scale
        lo = tl.load(code_ptr + (byte & 15).to(tl.int32)) * scale
        vals = tl.reshape(tl.join(hi, lo), (ROWS, BS))  # high nibble first
        offs = blk[:, None] * BS + tl.arange(0, BS)[None, :]
        if BF16_BITS:
            # fp32 -> bf16 rounding to nearest even done on the bits (out_ptr is int16): the same on every GPU and
            # in Triton's interpreter, whose own conversion rounds ties away from zero.
            bits = vals.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            tl.store(out_ptr + offs, bits.to(tl.int16), mask=offs < n)
        else:
            tl.store(out_ptr + offs, vals.to(out_ptr.dtype.element_ty), mask=offs < n)


def nf4_kernel_args(q: NF4Weight) -> tuple:
    """Pointer arguments of `_nf4_tile` / `_dequant_kernel` (unused ones point at `absmax`)."""
    if q.double_quant:
        return q.packed, q.absmax, q.absmax2, q.code2, q.offset, q.code
    return q.packed, q.absmax, q.absmax, q.absmax, q.absmax, q.code


def _check(q: NF4Weight, dtype) -> torch.dtype:
    if not isinstance(q, NF4Weight):
        raise TypeError(f"dequantize_nf4: expected an NF4Weight, got {type(q).__name__}")
    dtype = q.dtype if dtype is None else dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dequantize_nf4: dtype {dtype} not supported; choose one of {_DTYPES}")
    if q.blocksize not in _BLOCKSIZES:
        raise ValueError(f"dequantize_nf4: blocksize {q.blocksize} not supported; choose one of {_BLOCKSIZES}")
    return dtype


def dequantize_nf4(q: NF4Weight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The weight of `q` in `dtype` (default: the dtype it was quantized from), bit-exact with bitsandbytes."""
    dtype = _check(q, dtype)
    if not use_triton(q.packed):
        if q.packed.device.type == "cpu":  # the compiled op (csrc/); raises naming the build step when not built
            return native.nf4_dequantize(q, dtype)
        return dequantize_nf4_ref(q, dtype)
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    plan = launch_plan(q.numel(), q.blocksize, q.double_quant, dtype, arch_of(q.packed))
    grid = (triton.cdiv(triton.cdiv(q.numel(), q.blocksize), plan.constexprs["ROWS"]),)
    bf16 = dtype == torch.bfloat16
    run(plan, grid, *nf4_kernel_args(q), out.view(torch.int16) if bf16 else out, q.numel())
    return out


def launch_plan(n: int, blocksize: int, double: bool, dtype: torch.dtype, arch: int | None) -> Launch:
    """The dequantization launch of an NF4 weight of n values to `dtype` (bf16 is written as int16 bits)."""
    name = "nf4.dequantize"
    need(dtype in _DTYPES, name, f"dtype {dtype} not supported; choose one of {_DTYPES}")
    need(blocksize in _BLOCKSIZES, name, f"blocksize {blocksize} not supported; choose one of {_BLOCKSIZES}")
    need(1 <= n < 2**32, name, f"n={n} outside [1, 2**32)")
    family(arch, name)
    absmax = torch.uint8 if double else torch.float32
    out = torch.int16 if dtype == torch.bfloat16 else dtype
    args = (torch.uint8, absmax, torch.float32 if double else absmax, torch.float32 if double else absmax,
            torch.float32 if double else absmax, torch.float32, out, n)
    rows = max(1, 4096 // blocksize)  # 4096 values per program: enough bytes in flight per SM
    consts = {"BS": blocksize, "BS2": _BLOCKSIZE2, "ROWS": rows, "DOUBLE": double, "BF16_BITS": dtype == torch.bfloat16}
    return Launch(name, _dequant_kernel, args, consts, (Config.of(4, 3),), options={"enable_fp_fusion": False})


def quantize_nf4(w: torch.Tensor, blocksize: int = 64) -> NF4Weight:
    """Quantize `w` (fp32/fp16/bf16, any shape and device) to NF4 with double-quantized absmaxes.

    The codes and statistics equal those of bitsandbytes `quantize_4bit(w, blocksize=blocksize,
    quant_type="nf4", compress_statistics=True)` (its CPU rules: values of a full block are scaled by the
    fp32 reciprocal of the absmax, those of a short last block divided by it; the 8-bit absmax codes follow
    `_quantize_dynamic`).
    """
    if w.dtype not in _DTYPES:
        raise ValueError(f"quantize_nf4: weight dtype {w.dtype} not supported; choose one of {_DTYPES}")
    if blocksize not in _BLOCKSIZES:
        raise ValueError(f"quantize_nf4: blocksize {blocksize} not supported; choose one of {_BLOCKSIZES}")
    if w.numel() == 0:
        raise ValueError("quantize_nf4: empty weight")
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=w.device)
    flat = w.detach().reshape(-1).float()
    n = flat.numel()
    full = n - n % blocksize
    mids = (code[:-1] + code[1:]) / 2
    if w.device.type == "cpu":  # compiled: torch's bucketize and amax took ~10 s for SmolLM2's linears on CPU
        packed, absmax = native.nf4_quantize(flat, mids, blocksize)
    else:
        absmax = torch.empty(-(-n // blocksize), dtype=torch.float32, device=w.device)
        if full:
            absmax[: full // blocksize] = flat[:full].view(-1, blocksize).abs().amax(dim=1)
        if full < n:
            absmax[-1] = flat[full:].abs().amax()
        packed = _codes_ref(flat, absmax, mids, blocksize)

    offset = absmax.mean()
    qabsmax, absmax2 = _quantize_dynamic(absmax - offset, dynamic_map().to(w.device))
    return NF4Weight(packed=packed, absmax=qabsmax, code=code, shape=w.shape, dtype=w.dtype, blocksize=blocksize,
                     absmax2=absmax2, code2=dynamic_map().to(w.device), offset=offset)  # fmt: skip


def _codes_ref(flat: torch.Tensor, absmax: torch.Tensor, mids: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Packed NF4 codes of `flat` in plain torch (the rules of `quantize_nf4`; `native.nf4_quantize` on CPU)."""
    n = flat.numel()
    full = n - n % blocksize
    parts = []
    if full:
        recip = 1.0 / absmax[: full // blocksize].clamp(min=1e-38)
        parts.append((flat[:full].view(-1, blocksize) * recip[:, None]).clamp_(-1, 1).view(-1))
    if full < n:
        parts.append((flat[full:] / absmax[-1].clamp(min=1e-38)).clamp_(-1, 1))
    scaled = torch.cat(parts) if len(parts) > 1 else parts[0]
    idx = torch.bucketize(scaled, mids).to(torch.uint8)  # midpoint ties -> lower
    if n % 2:
        idx = torch.cat([idx, idx.new_full((1,), 7)])
    return (idx[0::2] << 4) | idx[1::2]


_LUTS: dict = {}


def _dynamic_lut(code2: torch.Tensor) -> torch.Tensor:
    """For each of the 65536 grid points, the number of `code2` midpoints strictly below it (kept per device and
    code book: rebuilding it for every weight made quantizing a model's 210 linears take seconds)."""
    key = (str(code2.device), tuple(code2.tolist()))
    if key not in _LUTS:
        grid = -1.0 + (2.0 * torch.arange(65536, dtype=torch.float32, device=code2.device)) / 65535.0
        _LUTS[key] = torch.searchsorted(0.5 * (code2[:-1] + code2[1:]), grid)
    return _LUTS[key]


def _quantize_dynamic(x: torch.Tensor, code2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization (blocks of 256) of fp32 `x` to indices into the sorted `code2`, with the
    rule of bitsandbytes' CPU `quantize_blockwise`: v = x * (1 / absmax2) is mapped to one of 65536 evenly
    spaced points on [-1, 1] (index trunc((v + 1) / 2 * 65535 + 0.5)), and each point to the number of code
    midpoints below it. (bitsandbytes' CUDA kernel picks the exact nearest code instead; the two differ by one
    index for rare values. Dequantization uses the stored indices, so it is exact either way.)"""
    n = x.numel()
    nb = -(-n // _BLOCKSIZE2)
    blocks = torch.nn.functional.pad(x, (0, nb * _BLOCKSIZE2 - n)).view(nb, _BLOCKSIZE2)
    absmax2 = blocks.abs().amax(dim=1)
    v = (blocks * (1.0 / absmax2)[:, None]).clamp_(-1, 1)
    point = ((v + 1.0) * 0.5 * 65535.0 + 0.5).long()  # every step rounded to fp32, as in bitsandbytes
    lut = _dynamic_lut(code2)
    q = torch.where((absmax2 == 0)[:, None], 0, lut[point.clamp_(0, 65535)])  # an all-zero block codes 0
    return q.view(-1)[:n].to(torch.uint8), absmax2


def absmax_ref(q: NF4Weight) -> torch.Tensor:
    """fp32 absmax per quantization block, undoing the double quantization in bitsandbytes' order."""
    if not q.double_quant:
        return q.absmax.float()
    scale2 = q.absmax2.repeat_interleave(_BLOCKSIZE2)[: q.absmax.numel()]
    return q.code2.index_select(0, q.absmax.int()) * scale2 + q.offset  # index_select: far faster than [] on CPU


def dequantize_nf4_ref(q: NF4Weight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Plain-torch dequantization (the CPU path), bit-exact with the Triton kernel and bitsandbytes."""
    dtype = _check(q, dtype)
    n, bs = q.numel(), q.blocksize
    nb = -(-n // bs)
    # One gather per byte from a 256-entry table of (high nibble, low nibble) values.
    pairs = torch.stack([q.code.repeat_interleave(16), q.code.repeat(16)], dim=1)  # (256, 2)
    vals = pairs.index_select(0, q.packed.int()).view(-1)
    if vals.numel() != nb * bs:  # a short last block
        vals = torch.nn.functional.pad(vals, (0, nb * bs - vals.numel())) if vals.numel() < nb * bs else vals[: nb * bs]
    vals = vals.view(nb, bs) * absmax_ref(q)[:, None]
    return vals.view(-1)[:n].to(dtype).view(q.shape)
