"""Triton kernels for the engine's hot paths, one op per module, each with its plain-torch reference.

Dispatch (see `coalm_kernels._dispatch`): CUDA tensors run the compiled kernels, CPU tensors the `_ref` path,
and with TRITON_INTERPRET=1 the kernels themselves run on CPU tensors in Triton's interpreter.
"""
