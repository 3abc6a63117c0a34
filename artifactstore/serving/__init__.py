"""Serving: weights into memory for inference processes, and keeping a running server current.

Owns: the loader (safetensors tensors as checked views of mapped packs, or one read buffer), the
follower (follows a pointer, keeps likely successors resident, swaps atomically), adapter
directories (checkout, and the cache servers share), the vLLM resolver plugin (vllm: imports vLLM
only when vLLM calls it) and the OpenAI-compatible gateway (gateway: needs the ``serve`` extra).
May import: ``registry``, ``content``, ``backends`` and the base modules. Never ``lifecycle`` or above.
"""

from .follower import Follower, LoadedVersion

__all__ = ["Follower", "LoadedVersion"]
