"""Real values for the few fake tensors that decide control flow during a fake (FakeTensorMode) training step.

The step is traced with fake tensors (no storage), but its host code reads some data: `cu_seqlens.tolist()` to
split packed sequences, the count of target tokens in the fused cross-entropy, `nonzero()` of the label mask. Those
tensors are small and integer (token ids, labels, offsets) or tiny floats (the loss scale), so this mode keeps a
real copy next to each fake one whose inputs all have real copies, computes the op on the copies too, and answers
`.item()` / `.tolist()` / `nonzero()` from them. Large floating-point tensors (weights, activations) never get one:
their values are never needed to know the memory.

Why hand-written: FakeTensorMode's own constant propagation stops at one element, and its dynamic-shape machinery
(unbacked SymInts) cannot branch on a count (`if n_valid == N`).
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten
_LIMIT = 1 << 24  # elements: a shadow is at most a few tens of MB (labels of a 300k-token micro-batch: 2.4 MB)
_LIKE = (aten.ones_like.default, aten.zeros_like.default, aten.full_like.default)  # values independent of the input
_DYNAMIC = (aten.nonzero.default, aten.masked_select.default, aten.unique_consecutive.default,
            aten._unique2.default)


class Shadows(TorchDispatchMode):
    def __init__(self, fake_mode):
        super().__init__()
        self.fake_mode = fake_mode
        self.real = WeakIdKeyDictionary()

    def __enter__(self):
        # FakeTensor.tolist() reads element by element (one unbind + one item per element); a known tensor answers
        # at once from its real copy
        self._tolist = FakeTensor.tolist
        shadows = self

        def tolist(t):
            real = shadows.real.get(t)
            return real.tolist() if real is not None else shadows._tolist(t)

        FakeTensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        FakeTensor.tolist = self._tolist
        return super().__exit__(*exc)

    def track(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        self.real[fake] = real  # (always a CPU tensor: the shadows never leave the host)
        return fake

    def _real(self, x):
        if isinstance(x, FakeTensor):
            return self.real[x]
        if isinstance(x, torch.device) and x.type != "cpu":
            return torch.device("cpu")
        return x

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        known = all(t in self.real or not isinstance(t, FakeTensor) for t in tensors)  # real constants are known
        if func is aten._local_scalar_dense.default:
            if not known:
                raise RuntimeError("memory trace: the step reads the value of a large or floating-point tensor "
                                   f"{tuple(args[0].shape)} {args[0].dtype}; it cannot be traced without data")
            with _disable_current_modes():
                return self._real(args[0]).item()
        if func in _DYNAMIC and known:
            with _disable_current_modes():
                out = func(*tree_map(self._real, args), **tree_map(self._real, kwargs))
                fake = self.fake_mode.from_tensor(out)
            return self.track(fake, out)
        returns = func._schema.returns
        if known and tensors and returns and not any("Tensor" in str(r.type) for r in returns):  # equal, is_nonzero
            with _disable_current_modes():
                return func(*tree_map(self._real, args), **tree_map(self._real, kwargs))
        if func in _LIKE and args[0].numel() <= _LIMIT:  # e.g. autograd's seed gradient, ones_like(loss)
            out = func(*args, **kwargs)
            with _disable_current_modes():
                self.real[out] = func(torch.empty(args[0].shape, dtype=args[0].dtype), *args[1:], **kwargs)
            return out
        out = func(*args, **kwargs)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        mutated = [a for a, s in zip(args, func._schema.arguments, strict=False)
                   if isinstance(a, torch.Tensor) and s.alias_info is not None and s.alias_info.is_write]
        if known and outs and sum(o.numel() for o in outs) <= _LIMIT and func is not aten.detach.default:
            with _disable_current_modes():
                real_out = func(*tree_map(self._real, args), **tree_map(self._real, kwargs))
            for o, r in zip(outs, [r for r in tree_flatten(real_out)[0] if isinstance(r, torch.Tensor)], strict=False):
                self.real[o] = r
        elif known and func is aten.detach.default:
            self.real[out] = self.real[args[0]]
        else:
            for a in mutated + outs:  # written with unknown values: no longer known
                self.real.pop(a, None)
        return out
