"""Content ids: ``b3:<64 hex>`` names for chunks, files, trees and packs."""

import blake3

from .errors import InvalidParameter

PREFIX = "b3:"
DIGEST_SIZE = 32
TREE_CONTEXT = "artifactstore 2026-11 tree manifest v1"


def format_id(digest: bytes) -> str:
    return PREFIX + digest.hex()


def parse_id(text: str) -> bytes:
    """The 32-byte digest named by ``b3:<hex>``; anything else is an InvalidParameter."""
    hex_part = text[len(PREFIX):] if text.startswith(PREFIX) else None
    if hex_part is None or len(hex_part) != 2 * DIGEST_SIZE or hex_part != hex_part.lower():
        raise InvalidParameter(f"not a content id: {text!r} (expected b3: and 64 lowercase hex digits)")
    try:
        return bytes.fromhex(hex_part)
    except ValueError:
        raise InvalidParameter(f"not a content id: {text!r} (expected b3: and 64 lowercase hex digits)") from None


def digest(data) -> bytes:
    """Plain BLAKE3 of a buffer, using every core for large ones."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO if len(data) >= 1 << 20 else 1).digest()


def tree_digest(manifest_bytes: bytes) -> bytes:
    return blake3.blake3(manifest_bytes, derive_key_context=TREE_CONTEXT).digest()
