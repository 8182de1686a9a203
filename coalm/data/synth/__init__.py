"""Synthetic CoALM-IT function-calling rows over many made-up APIs (`generate_la`); see `generate.py`."""

from .apis import APIS
from .generate import PATTERNS, generate_la

__all__ = ["APIS", "PATTERNS", "generate_la"]
