"""The versioning rules: what changed between two versions, and what its number must say.

major = a different base model; minor = retrained adapter weights (any tensor, or the adapter
settings); patch = nothing in the weights (inference config, prompt, eval, changelog).
"""

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameter
from .refs import SemVer, parse_version
from .state import ModelState

if TYPE_CHECKING:
    from .bundle import Bundle

CHANGE_KINDS = ("major", "minor", "patch")


@dataclass(frozen=True)
class Change:
    """What differs between two versions' bundles, as the versioning rules see it."""

    base_model: bool
    tensors_changed: int
    tensors_total: int
    adapter_settings: bool
    serving: bool

    @property
    def kind(self) -> str:
        if self.base_model:
            return "major"
        if self.tensors_changed or self.adapter_settings:
            return "minor"
        return "patch"

    def describe(self) -> str:
        if self.base_model:
            return "the base model changed"
        if self.tensors_changed:
            return f"the adapter weights changed ({self.tensors_changed} of {self.tensors_total} tensors differ)"
        if self.adapter_settings:
            return "the adapter config changed"
        if self.serving:
            return "only the inference config changed; the weights are identical"
        return "the weights and inference config are identical"


def compare(previous: dict[str, Any], bundle: "Bundle") -> Change:
    from .bundle import canonical_settings  # loaded with the bundle already; reading versions needs neither

    old_tensors = previous["tensors"]
    new_tensors = {name: t.__dict__ | {"shape": list(t.shape)} for name, t in bundle.tensors.items()}
    names = set(old_tensors) | set(new_tensors)
    return Change(
        base_model=previous["base_model"] != bundle.metadata.base_model,
        tensors_changed=sum(old_tensors.get(n) != new_tensors.get(n) for n in names),
        tensors_total=len(names),
        # canonical_settings: records written before settings were stored sorted compare correctly too
        adapter_settings=canonical_settings(previous["adapter_settings"]) != bundle.adapter_settings,
        serving=previous["inference_config"] != bundle.inference_config)


def previous_version(state: ModelState, version: str) -> str | None:
    """The highest existing version below ``version``: what a push of it is compared with."""
    below = [v for v in state.sorted_versions() if parse_version(v) < parse_version(version)]
    return below[-1] if below else None


def next_version(state: ModelState, version: str) -> str | None:
    """The lowest existing version above ``version``: the one a push of it comes right before."""
    above = [v for v in state.sorted_versions() if parse_version(v) > parse_version(version)]
    return above[0] if above else None


def check_insertion(version: str, following: str, change: Change) -> None:
    """Refuse a version pushed right below an existing one whose number would then no longer say
    what changed since its previous version (``change``: from ``version`` to ``following``)."""
    label = parse_version(following).kind_of_bump_from(parse_version(version))
    if label is not None and label != change.kind:
        raise InvalidParameter(f"{version} would come right before {following}, a {label} bump over it, but from "
                               f"{version} to {following} {change.describe()}: push it under another number")


def free_bump(version: SemVer, kind: str, deleted: Collection[str]) -> SemVer:
    """``version`` bumped as ``kind`` says, past the numbers of ``deleted`` versions (never reused)."""
    bumped = version.bump(kind)
    while str(bumped) in deleted:
        bumped = bumped.bump(kind)
    return bumped


def check_label(version: str, previous: str | None, change: Change | None, deleted: Collection[str] = (),
                fits: Callable[[str], bool] = lambda _: True) -> None:
    """Refuse a version number that does not say what changed since ``previous``, suggesting the
    first one that does and is none of ``deleted``, if ``fits`` says a push of it would pass."""
    if previous is None or change is None:
        return
    label = parse_version(version).kind_of_bump_from(parse_version(previous))
    if label != change.kind:
        said = f"{version} is " + (f"a {label} bump over {previous}" if label else f"not a valid bump over {previous}")
        expected = str(free_bump(parse_version(previous), change.kind, deleted))
        if not fits(expected):
            raise InvalidParameter(f"{said}, but {change.describe()}, and no free number of a {change.kind} bump "
                                   f"over {previous} fits before the next version: push it with --bump auto")
        raise InvalidParameter(f"{said}, but {change.describe()}: push it as {expected} (a {change.kind} bump)")
