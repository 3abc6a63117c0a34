"""Copies of chunks into this machine's hot tier, each checked against its id on the way.

``make_hot`` is what reads of a store shared through a bucket do before they read (and what
``pull`` does): the chunks they need that this machine's cache lacks are fetched from the bucket
once, into packs of the cache, by one process of the machine at a time, so that every process of
the machine then maps the same cached packs (one copy in the page cache) instead of each
downloading its own. ``copy_into_hot`` is the copying itself, which ``tier`` also uses to rehome
hot chunks of packs it evicts.
"""

import fcntl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import blake3

from ..backends import Backend
from ..errors import CorruptObject, NotFound
from ..ids import format_id
from ..progress import Progress, no_progress
from .index import Location
from .pack import pack_key
from .store import ContentStore

MERGE_GAP = 1 << 20  # read over a gap this small rather than issue another request
MAX_RANGE = 16 << 20
FETCH_LOCK = "gc/fetch.lock"  # in this machine's directory of the store


def make_hot(content: ContentStore, chunks: Iterable[tuple[bytes, int]], *,
             progress: Progress = no_progress) -> tuple[int, int]:
    """Copy into the hot tier, from the cold tier, the ``chunks`` (digest, length) that have no
    copy there; returns how many chunks were fetched and how many bytes.

    Processes of one machine fetch one at a time (an ``flock`` on FETCH_LOCK): one that waited
    reads the index files the other wrote meanwhile and fetches only what is still missing, so a
    machine whose processes all load the same version downloads it once.
    """
    missing = _not_hot(content, chunks)
    if not missing:
        return 0, 0
    if content.cold is None:
        raise NotFound(f"{len(missing)} chunks are in no tier of {content.location}")
    with _fetch_lock(content):
        content.refresh_index()
        content.rescan_hot_tier()
        missing = _not_hot(content, missing)
        return len(missing), copy_into_hot(content, [(c, n, content.cold) for c, n in missing], progress)


def _not_hot(content: ContentStore, chunks: Iterable[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    missing = []
    for chunk, length in chunks:
        if chunk not in content.index and not (content.refresh_index() and chunk in content.index):
            raise CorruptObject(f"chunk {format_id(chunk)} is missing from the store")
        if content.hot_location(chunk) is None:
            missing.append((chunk, length))
    return missing


@contextmanager
def _fetch_lock(content: ContentStore) -> Iterator[None]:
    path = content.path / FETCH_LOCK
    path.parent.mkdir(exist_ok=True)
    with open(path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def copy_into_hot(content: ContentStore, chunks: list[tuple[bytes, int, Backend | None]],
                  progress: Progress = no_progress) -> int:
    """Write chunks (digest, length, the tier to read it from), each checked, into new hot packs
    (with their guards, then one index file); the bytes copied."""
    if not chunks:
        return 0
    copied = 0
    with content.pack_session(restore=True) as session:
        for source in {id(tier): tier for _, _, tier in chunks}.values():
            wanted = sorted(((_location_in(content, source, c), c) for c, _, tier in chunks if tier is source),
                            key=lambda item: (item[0].pack, item[0].offset))
            for chunk, data in _read_chunks(source, wanted):
                if blake3.blake3(data).digest() != chunk:
                    raise CorruptObject(f"the copy of chunk {format_id(chunk)} being moved is damaged")
                session.add(chunk, data)
                copied += len(data)
                progress(len(data))
    return copied


def _location_in(content: ContentStore, tier, chunk: bytes) -> Location:
    """A location of ``chunk`` in a pack that ``tier`` holds."""
    locations = content.index.all_locations(chunk)
    if tier is content.hot:
        return next(loc for loc in locations if loc.pack in content.hot_packs)
    return next((loc for loc in locations if loc.pack not in content.hot_packs), locations[0])


def _read_chunks(tier, wanted: list) -> Iterator[tuple[bytes, memoryview]]:
    """(chunk, bytes) for ``wanted`` = [(location, chunk)] sorted by pack and offset: chunks that lie
    close together in one pack are fetched by one ranged read, all ranges concurrently."""
    runs: list[tuple[bytes, int, int, list]] = []  # pack, start, end, [(location, chunk)]
    for location, chunk in wanted:
        end = location.offset + location.length
        if runs and runs[-1][0] == location.pack and location.offset - runs[-1][2] <= MERGE_GAP \
                and end - runs[-1][1] <= MAX_RANGE:
            pack, start, _, members = runs[-1]
            runs[-1] = (pack, start, end, members)
            members.append((location, chunk))
        else:
            runs.append((location.pack, location.offset, end, [(location, chunk)]))
    blobs = tier.read_ranges([(pack_key(pack), start, end - start) for pack, start, end, _ in runs])
    for (pack, start, end, members), blob in zip(runs, blobs):
        if len(blob) != end - start:
            raise CorruptObject(f"{pack_key(pack)} is shorter than its index says")
        view = memoryview(blob)
        for location, chunk in members:
            yield chunk, view[location.offset - start:location.offset - start + location.length]
