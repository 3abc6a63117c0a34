# Types of the compiled module built from native/mapping.pyx.
from typing import Any

PAGE_SIZE: int
# Private memory with pieces of files mapped into it, exporting the buffer protocol (typed Any so
# that numpy accepts it as a buffer under every Python version mypy checks).
FileMapping: Any

def buffer_address(data: Any) -> int: ...
