# Types of the compiled module built from native/mapping.pyx.
from typing import Any

# A read-only-file, copy-on-write mapping exporting the buffer protocol (typed Any so that numpy
# accepts it as a buffer under every Python version mypy checks).
FileMapping: Any
