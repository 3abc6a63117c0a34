"""The versions monitoring data belongs to, as the registry names them."""

from dataclasses import dataclass

from ..errors import Conflict
from ..registry.refs import ModelName
from ..registry.registry import Registry
from .arrays import MonitoringArrays, Place, version_path


@dataclass(frozen=True)
class Served:
    """A version as the registry names it now: its model, number and bundle."""

    model: ModelName
    version: str
    bundle: str

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"


def served(registry: Registry, ref: str) -> Served:
    """The version ``ref`` names; ``client/model`` alone names its production version."""
    state, version = registry.resolve_version(ref if "@" in ref else f"{ref}@production")
    return Served(state.model, version, registry.record(state, version)["bundle"])


def check_stamp(arrays: MonitoringArrays, place: Place, version: Served) -> None:
    """Refuse data written for an earlier, deleted version of the same number (gc removes it)."""
    stamp = arrays.root_attributes(place, version_path(version.model, version.version)).get("bundle")
    if stamp != version.bundle:
        raise Conflict(f"the monitoring data of {version.ref} was written for a deleted version of that number "
                       f"(bundle {stamp}): run `artifactstore gc` to remove it first")
