"""Fine-tuning data, knowing nothing of any one data set: Alpaca rows, chat rendering with a loss mask, the render
cache, and batching into packed `Batch`es (`pack_varlen`, the one packer, also shaped for prefill)."""

from __future__ import annotations

from .pack import IGNORE, Batch, pack_varlen

__all__ = ["IGNORE", "Batch", "pack_varlen"]
