"""``kept/<hex>``: the objects a user put outside the registry, which gc keeps whatever the registry says.

gc keeps what it cannot tell apart from a put: a tree no version ever named, a file no tree lists.
A tree that a deleted version named is garbage to it, though, and so are the files only such a
tree lists: a plain ``put`` of the same bytes (a deleted version's bundle kept after all) would
otherwise be collected. So a plain put records the id it returned in an empty object named by that
id, written after the object's manifests; gc keeps every object so named, and verify checks that
each is there. A put inside a push records nothing: its version names it. The later of a put and
a delete wins: deleting a version takes back the records of its bundle and of its files (a put
made before it of the same bytes), and a put after the delete records them again.
"""

from collections.abc import Iterable

from ..backends import Backend
from ..errors import InvalidParameter, NotFound
from ..ids import PREFIX, parse_id

KEPT_PREFIX = "kept"


def kept_key(object_id: str) -> str:
    return f"{KEPT_PREFIX}/{parse_id(object_id).hex()}"


def keep(backend: Backend, object_id: str) -> None:
    """Record that ``object_id`` was put outside the registry (again: a fresh write is harmless)."""
    backend.write(kept_key(object_id), b"")


def forget(backend: Backend, object_ids: Iterable[str]) -> None:
    """Take back the records of ``object_ids`` where there are any."""
    for object_id in object_ids:
        try:
            backend.delete(kept_key(object_id))
        except NotFound:
            pass


def kept_objects(backend: Backend) -> list[tuple[str, str | None]]:
    """(key, the id it names) of every object put outside the registry since puts recorded them; the
    id is None where the key is no object's name (verify reports it; it keeps nothing)."""
    found: list[tuple[str, str | None]] = []
    for key in backend.list(KEPT_PREFIX):
        object_id = PREFIX + key.rsplit("/", 1)[-1]
        try:
            parse_id(object_id)
        except InvalidParameter:
            found.append((key, None))
        else:
            found.append((key, object_id))
    return found
