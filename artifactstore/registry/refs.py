"""Names, semantic versions and refs: ``client/model@vX.Y.Z``, ``client/model@production``, ``b3:<hex>``."""

import re
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import InvalidParameter
from ..ids import PREFIX, parse_id
from .pointers import NAMES as POINTER_NAMES

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
VERSION = re.compile(r"v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
LATEST = "latest"
# Digits a version's number may have: far beyond any real version, and a bound on what int() is given
# (past 4,300 digits Python refuses to convert at all).
MAX_VERSION_DIGITS = 18


class SemVer(NamedTuple):
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"

    def bump(self, kind: str) -> "SemVer":
        if kind == "major":
            bumped = SemVer(self.major + 1, 0, 0)
        elif kind == "minor":
            bumped = SemVer(self.major, self.minor + 1, 0)
        else:
            bumped = SemVer(self.major, self.minor, self.patch + 1)
        if max(bumped) >= 10 ** MAX_VERSION_DIGITS:
            raise InvalidParameter(f"{self} has no next {kind} version: a version's numbers have at most "
                                   f"{MAX_VERSION_DIGITS} digits")
        return bumped

    def kind_of_bump_from(self, previous: "SemVer") -> str | None:
        """'major', 'minor' or 'patch' if this is a well-formed bump over ``previous``, else None."""
        if self.major > previous.major and self.minor == 0 and self.patch == 0:
            return "major"
        if self.major == previous.major and self.minor > previous.minor and self.patch == 0:
            return "minor"
        if self[:2] == previous[:2] and self.patch > previous.patch:
            return "patch"
        return None


def parse_version(text: str) -> SemVer:
    match = VERSION.fullmatch(text)
    if match is None:
        raise InvalidParameter(f"not a version: {text!r} (expected vMAJOR.MINOR.PATCH, e.g. v1.2.0)")
    if any(len(number) > MAX_VERSION_DIGITS for number in match.groups()):
        shown = text if len(text) <= 60 else f"{text[:57]}..."
        raise InvalidParameter(f"not a version: {shown!r} (a version's numbers have at most {MAX_VERSION_DIGITS} "
                               "digits)")
    return SemVer(*map(int, match.groups()))


def check_name(kind: str, text: str) -> str:
    if NAME.fullmatch(text) is None:
        raise InvalidParameter(
            f"invalid {kind} name {text!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return text


@dataclass(frozen=True)
class ModelName:
    client: str
    model: str

    def __str__(self) -> str:
        return f"{self.client}/{self.model}"

    @classmethod
    def parse(cls, text: str) -> "ModelName":
        client, slash, model = text.partition("/")
        if not slash:
            raise InvalidParameter(f"not a model name: {text!r} (expected client/model)")
        return cls(check_name("client", client), check_name("model", model))


@dataclass(frozen=True)
class Ref:
    """What a ref names: a model and a version or pointer, or a content id."""

    model: ModelName | None = None
    target: str = ""  # a version string, a pointer name or "latest"; "" for a content id
    object_id: str | None = None

    @property
    def is_version(self) -> bool:
        return VERSION.fullmatch(self.target) is not None

    def __str__(self) -> str:
        return self.object_id or f"{self.model}@{self.target}"

    @classmethod
    def parse(cls, text: str) -> "Ref":
        if text.startswith(PREFIX):
            parse_id(text)
            return cls(object_id=text)
        name, at, target = text.partition("@")
        if not at or not target:
            raise InvalidParameter(
                f"not a ref: {text!r} (expected client/model@vX.Y.Z, client/model@POINTER or b3:<hex>)")
        model = ModelName.parse(name)
        if target.startswith("v"):
            parse_version(target)
        elif target not in (*POINTER_NAMES, LATEST):
            raise InvalidParameter(
                f"unknown pointer {target!r} in {text!r}: expected a version or one of "
                f"{', '.join((*POINTER_NAMES, LATEST))}")
        return cls(model=model, target=target)
