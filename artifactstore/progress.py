"""Progress callbacks: long operations report bytes done through one of these; and how a count of
bytes reads."""

from collections.abc import Callable

Progress = Callable[[int], None]


def no_progress(_: int) -> None:
    pass


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
