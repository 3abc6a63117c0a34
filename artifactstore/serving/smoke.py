"""Smoke checks: a version's known inputs (its bundle's ``smoke_tests.jsonl``) through the server's own
inference, each output compared with what the test expects. The seeds: "send 5-10 known test
inputs through the model and verify the outputs match expected behavior".
"""

import json
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..clock import timestamp
from ..registry.bundle import SmokeTest


@dataclass(frozen=True)
class SmokeResult:
    version: str
    ok: bool
    at: str
    tests: int  # tests run
    failed: list[str] = field(default_factory=list)  # the failing tests' names (or inputs)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "version"}


def check_output(test: SmokeTest, output: Any) -> str | None:
    """Why ``output`` fails ``test``, or None when it passes."""
    if "expected" in test.model_fields_set:
        if _same(test.expected, output, test.tolerance or 0.0):
            return None
        return f"expected {_short(test.expected)}, got {_short(output)}"
    text = output if isinstance(output, str) else _as_text(output)
    if test.contains is not None:
        wanted = [test.contains] if isinstance(test.contains, str) else test.contains
        absent = [w for w in wanted if w not in text]
        return f"{_short(text)} does not contain {', '.join(map(repr, absent))}" if absent else None
    assert test.matches is not None
    return None if re.search(test.matches, text) else f"{_short(text)} does not match {test.matches!r}"


def _same(expected: Any, actual: Any, tolerance: float) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, numbers.Real) and isinstance(actual, numbers.Real):
        return abs(float(expected) - float(actual)) <= tolerance
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(_same(v, actual[k], tolerance) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(actual, (list, tuple)):
        return len(expected) == len(actual) and all(_same(e, a, tolerance) for e, a in zip(expected, actual))
    return expected == actual


def _as_text(value: Any) -> str:
    """A structured output as the JSON text a test searches: characters as they are, not escaped
    (a Spanish answer's "días" must contain "días")."""
    return json.dumps(value, default=str, ensure_ascii=False)


def _short(value: Any) -> str:
    """A value in a one-line message: text quoted, anything else as JSON; at most about 60 characters."""
    text = value if isinstance(value, str) else _as_text(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return repr(text) if isinstance(value, str) else text


def run_smoke_tests(version: str, tests: Sequence[SmokeTest], infer: Callable[[Any], Any]) -> SmokeResult:
    """Every test through ``infer`` (the server's inference on one input); a test whose inference
    raises fails. Never raises."""
    failed, reasons = [], []
    for test in tests:
        try:
            why = check_output(test, infer(test.input))
        except Exception as exc:  # the server's code: any failure of it fails the test
            why = f"{type(exc).__name__}: {exc}"
        if why is not None:
            failed.append(test.label)
            reasons.append(f"{test.label}: {why}")
    shown = "; ".join(reasons[:2]) + (f"; and {len(reasons) - 2} more" if len(reasons) > 2 else "")
    detail = f"{len(failed)} of {len(tests)} tests failed: {shown}" if failed else f"{len(tests)} tests passed"
    return SmokeResult(version, not failed, timestamp(), len(tests), failed, detail)
