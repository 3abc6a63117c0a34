"""The client-facing messages of the seeds: the rollback notice, and the change log of an update."""

from typing import Any, Literal

from ..errors import InvalidParameter
from .pointers import PRODUCTION
from .queries import changelog
from .registry import Registry

ROLLBACK_NOTICE = ("We identified an issue with the latest model update and have rolled back to the previous "
                   "stable version ({version}). Service is restored. We're investigating the root cause and will "
                   "provide an update within 24 hours.")


def notice(registry: Registry, ref: str, kind: Literal["rollback", "update"]) -> dict[str, Any]:
    """The message to send a client about version ``ref``.

    ``rollback``: the seeds' notice that production was rolled back to ``ref`` (which must be
    production now). ``update``: the change log from the version production had before ``ref`` (or
    has now, if ``ref`` is not production yet) to ``ref``.
    """
    state, version = registry.resolve_version(ref)
    production = state.pointer(PRODUCTION)
    log = registry.log(state.model) if production == version else []
    if kind == "rollback":
        if production != version:
            raise InvalidParameter(f"{state.model}@production is {production or 'unset'}, not {version}: a rollback "
                                   f"notice names the version production was rolled back to")
        rolled = next((e for e in reversed(log) if e.pointer == PRODUCTION and e.to == version
                       and e.action == "rollback"), None)
        return {"kind": kind, "model": str(state.model), "version": version,
                "from": rolled.from_ if rolled else None, "at": rolled.at if rolled else None,
                "text": ROLLBACK_NOTICE.format(version=version) + "\n"}
    if kind != "update":
        raise InvalidParameter(f"unknown notice kind {kind!r}: rollback or update")
    if production == version:
        promoted = next((e for e in reversed(log) if e.pointer == PRODUCTION and e.to == version), None)
        previous = promoted.from_ if promoted else None
    else:
        previous = production
    if previous is None:
        raise InvalidParameter(f"{state.model}@{version} replaces no production version: there is nothing to "
                               f"compare it with")
    return {"kind": kind, "model": str(state.model), "version": version, "from": previous, "at": None,
            "text": changelog(registry, f"{state.model}@{previous}", f"{state.model}@{version}")}
