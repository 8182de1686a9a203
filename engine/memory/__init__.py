"""Memory you can plan: activation checkpointing policies (`policy`), activation offload to host memory
(`offload`), the traced memory model (`trace`: one real training step under FakeTensorMode and PyTorch's
MemTracker) and the plan the trainer prints and acts on (`plan`: `--plan`, `--activation-checkpointing auto`,
`--memory-budget`). See docs/memory.md."""
