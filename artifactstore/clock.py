"""The current time, which every command reads from ``ARTIFACTSTORE_NOW`` when it is set.

Release control runs on hours and days (a canary held 24 h, a drill due monthly); tests and demos
set ``ARTIFACTSTORE_NOW`` (ISO 8601, e.g. ``2026-11-26T10:00:00Z``) to run such a plan in seconds.
"""

import os
import re
from datetime import UTC, datetime, timedelta

from .errors import InvalidParameter

NOW_VARIABLE = "ARTIFACTSTORE_NOW"
DURATION = re.compile(r"(\d+)([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_DAYS = 36_500  # a century: any longer, and a time that far back or ahead leaves the calendar


def now() -> datetime:
    """The current time in UTC (aware), or ``$ARTIFACTSTORE_NOW``."""
    text = os.environ.get(NOW_VARIABLE)
    if not text:
        return datetime.now(UTC)
    return parse_time(text, NOW_VARIABLE)


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(f"{what}: not an ISO 8601 time: {text!r} (e.g. 2026-11-26T10:00:00Z)") from None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # valid with its offset, but in UTC before year 1 or after year 9999
        raise InvalidParameter(f"{what}: {text!r} is outside the years 1 to 9999 in UTC") from None


def timestamp(moment: datetime | None = None) -> str:
    """``moment`` (default: now) as the registry writes times: UTC, microseconds, ``Z``."""
    return (moment or now()).astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``6h``, ``7d``."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidParameter(f"not a duration: {text!r} (expected a number and s, m, h or d, e.g. 6h)")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds > MAX_DURATION_DAYS * UNITS["d"]:
        raise InvalidParameter(f"duration {text.strip()} is longer than {MAX_DURATION_DAYS}d")
    return seconds


def duration(text: str) -> timedelta:
    """``parse_duration`` as a ``timedelta``."""
    return timedelta(seconds=parse_duration(text))
