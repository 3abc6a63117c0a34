"""Progress callbacks: long operations report bytes done through one of these."""

from collections.abc import Callable

Progress = Callable[[int], None]


def no_progress(_: int) -> None:
    pass
