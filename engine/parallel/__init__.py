"""Parallelism on torch.distributed, applied to a built model (the model code knows nothing of it).

    mesh.py           the 2-D (dp, tp) device mesh, from torchrun's environment
    tp.py             tensor parallelism: column/row-parallel linears, sharded heads, vocab-parallel embedding and loss
    tp_layers.py      the autograd functions and layers tp.py places
    data_parallel.py  data parallel: sharing rows and work over DP replicas, gradient all-reduce, padding
    fsdp.py           FSDP2 (fully_shard over dp) for --full
    dist.py           rank / world size and printing from rank 0
"""
