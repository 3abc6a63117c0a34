# Types of the compiled module built from native/fastcdc.pyx (buffers: any C-contiguous buffer).
from collections.abc import Sequence
from typing import Any

class Chunker:
    def __init__(self, gear: Sequence[int], min_size: int, avg_size: int, max_size: int, mask_s: int,
                 mask_l: int, two_lanes: bool = True) -> None: ...
    def cut(self, data: Any, at_eof: bool = True) -> tuple[list[int], int]: ...
