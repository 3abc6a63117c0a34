"""What each pointer named, and when: the audit log read as a timeline (mlflow #2169: "which
version was in production at any point in time").

Every pointer move is an audit entry (``pointer``, ``from``, ``to``, ``at``), so the log alone says
which version each pointer named over any span of time; nothing else is recorded for it.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..clock import parse_time
from ..errors import InvalidParameter
from ..registry.pointers import NAMES
from ..registry.state import AuditEntry

# The times ``?at=`` may ask about: no registry holds older entries, a later one is a typo, and the
# timeline, which stretches to the time asked about, draws a tick per year at most: under 130.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Span:
    """A pointer naming one version from ``start`` until ``end`` (None: still)."""

    pointer: str
    version: str
    start: datetime
    end: datetime | None
    percent: int | None = None  # a canary's share of traffic
    seq: int = 0  # the audit entry that began it

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and (self.end is None or self.end > start)

    @property
    def label(self) -> str:
        return f"{self.version} ({self.percent}%)" if self.percent is not None else self.version


def pointer_spans(entries: Iterable[AuditEntry]) -> list[Span]:
    """Every span of every pointer, in the order they began, from the audit log (oldest first)."""
    spans: list[Span] = []
    open_spans: dict[str, int] = {}  # pointer -> index of its current span
    for entry in entries:
        if entry.pointer not in NAMES:
            continue
        at = parse_time(entry.at, "audit entry")
        if entry.pointer in open_spans:
            i = open_spans.pop(entry.pointer)
            spans[i] = Span(spans[i].pointer, spans[i].version, spans[i].start, at, spans[i].percent, spans[i].seq)
        if entry.to is not None:
            open_spans[entry.pointer] = len(spans)
            spans.append(Span(entry.pointer, entry.to, at, None, entry.percent, entry.seq))
    return spans


@dataclass(frozen=True)
class Moment:
    """A time asked about (``?at=``): an instant, or a whole day when only a date was given."""

    text: str
    start: datetime
    end: datetime

    @property
    def is_day(self) -> bool:
        return self.end - self.start == timedelta(days=1)

    @classmethod
    def parse(cls, text: str) -> "Moment":
        text = text.strip()
        outside = InvalidParameter(f"{text!r} is outside the years {EARLIEST.year} to {LATEST.year - 1}")
        try:
            start, length = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC), timedelta(days=1)
        except ValueError:
            try:
                start, length = parse_time(text, "at"), timedelta(microseconds=1)
            except InvalidParameter:
                try:
                    datetime.fromisoformat(text)
                except ValueError:
                    raise InvalidParameter(f"not a date or time: {text!r} (e.g. 2026-11-26 or "
                                           f"2026-11-26T10:00:00Z)") from None
                raise outside from None  # a time its zone puts past year 1 or 9999
        if not EARLIEST <= start < LATEST:
            raise outside
        return cls(text, start, start + length)


def in_production(spans: Iterable[Span], moment: Moment) -> list[Span]:
    """The production spans during ``moment``: one for an instant, every one that served that day
    for a date."""
    return [s for s in spans if s.pointer == "production" and s.overlaps(moment.start, moment.end)]
