"""Integrity check of the content: packs in both tiers, guards, index files, manifests (docs/format.md)."""

import random

import blake3

from ..errors import CorruptObject, InvalidParameter, NotFound
from ..ids import digest, format_id, tree_digest
from ..progress import Progress
from .guard import checksum, encode_guard, guard_key
from .index import decode_index, index_id_from_key
from .manifest import FileManifest, TreeManifest, decode_manifest, manifest_key
from .pack import PackEntry, decode_trailer, pack_id_from_key, read_trailer
from .store import ContentStore

TIERS = ("hot", "cold", "all")


def verify_content(store: ContentStore, progress: Progress, *, tier: str = "all", sample: float = 100.0,
                   repair: bool = False) -> tuple[list[str], list[str]]:
    """(problems, repairs): every damaged or inconsistent object, and what ``repair`` restored.

    ``tier`` chooses whose packs are re-hashed (the other tier's trailers are still read, to check
    the index); ``sample`` re-hashes that percentage of packs and files, picked at random; file
    contents are re-hashed only with ``tier="all"``. ``repair`` replaces a damaged or truncated
    pack copy with the other tier's copy when that one is sound.
    """
    if tier not in TIERS:
        raise InvalidParameter(f"--tier must be one of {', '.join(TIERS)}, not {tier!r}")
    if not 0 < sample <= 100:
        raise InvalidParameter(f"--sample must be a percentage in (0, 100], not {sample}")
    if tier == "cold" and store.cold is None:
        raise InvalidParameter(f"{store.location} has no cold tier")
    problems: list[str] = []
    repairs: list[str] = []
    picked = (lambda: True) if sample >= 100 else (lambda: random.random() * 100 < sample)
    tiers = {"hot": store.hot, "cold": store.cold}
    packs: dict[bytes, dict[bytes, PackEntry]] = {}
    damaged_chunks: set[bytes] = set()
    for name, backend in tiers.items():
        if backend is None:
            continue
        other_name = "cold" if name == "hot" else "hot"
        checked = tier in (name, "all")
        for key in backend.list("packs"):
            pack_id = pack_id_from_key(key)
            if pack_id is None:
                problems.append(f"{name} {key}: not a pack name")
                continue
            if not (checked and picked()):
                try:
                    packs.setdefault(pack_id, {e.chunk: e for e in read_trailer(backend, key)[1]})
                except CorruptObject as exc:
                    problems.append(f"{name} {exc}")
                continue
            data = backend.read(key)
            progress(len(data))
            found, entries, bad_chunks = _pack_problems(data, pack_id, f"{name} {key}")
            if found and repair and _restore(backend, tiers[other_name], key, pack_id):
                repairs.append(f"{name} {key}: restored from the {other_name} tier")
                continue
            if found and repair:
                found[-1] += f" (no sound copy in the {other_name} tier to repair it from)"
            problems.extend(found)
            damaged_chunks |= bad_chunks
            if entries is not None:
                packs.setdefault(pack_id, {e.chunk: e for e in entries})
            if not found and entries is not None and backend is store.hot:
                _verify_guard(backend, pack_id, data, entries, repair, problems, repairs)
    for home in {id(b): b for b in (store.home, store.hot)}.values():
        _verify_indexes(home, packs, problems)
    _verify_manifests(store, damaged_chunks, problems, progress, content=tier == "all", picked=picked)
    store.rescan_hot_tier()
    return problems, repairs


def _pack_problems(data: bytes, pack_id: bytes, where: str) -> tuple[list[str], list[PackEntry] | None, set[bytes]]:
    try:
        trailer_id, entries = decode_trailer(data, len(data), where)
    except CorruptObject as exc:
        return [str(exc)], None, set()
    found = [] if trailer_id == pack_id else [f"{where}: trailer does not hash to the pack's name"]
    view, damaged = memoryview(data), set()
    for e in entries:
        if blake3.blake3(view[e.offset:e.offset + e.length]).digest() != e.chunk:
            found.append(f"{where}: chunk {format_id(e.chunk)} at offset {e.offset} is damaged")
            damaged.add(e.chunk)
    return found, entries, damaged


def _verify_guard(hot, pack_id: bytes, data: bytes, entries: list[PackEntry], repair: bool,
                  problems: list[str], repairs: list[str]) -> None:
    """A sound hot pack's guard must match it; ``repair`` writes a missing or wrong one (a store
    from before guards gets them so)."""
    view = memoryview(data)
    expected = encode_guard(pack_id, [(e.offset, e.length, checksum(view[e.offset:e.offset + e.length])) for e in entries])
    key = guard_key(pack_id)
    current = hot.read(key) if hot.exists(key) else None
    if current == expected:
        return
    if repair:
        hot.write(key, expected)
        repairs.append(f"hot {key}: {'rewritten' if current else 'written'} from its verified pack")
    elif current is not None:
        problems.append(f"hot {key}: does not match its pack (loads check that pack with BLAKE3 instead)")


def _restore(damaged_tier, source_tier, key: str, pack_id: bytes) -> bool:
    """Overwrite a damaged pack copy with a sound one from the other tier, if there is one."""
    if source_tier is None or not source_tier.exists(key):
        return False
    good = source_tier.read(key)
    if _pack_problems(good, pack_id, key)[0]:
        return False
    damaged_tier.write(key, good)
    return True


def _verify_indexes(backend, packs, problems) -> None:
    for key in backend.list("index"):
        index_id = index_id_from_key(key)
        data = backend.read(key)
        if index_id is None or digest(data) != index_id:
            problems.append(f"{key}: content does not hash to its name")
            continue
        try:
            listed = decode_index(data, key)
        except CorruptObject as exc:
            problems.append(str(exc))
            continue
        for pack_id, entries in listed:
            in_pack = packs.get(pack_id)
            if in_pack is None:
                problems.append(f"{key}: lists pack {pack_id.hex()}, which is missing or unreadable")
                continue
            if any(in_pack.get(e.chunk) != e for e in entries):
                problems.append(f"{key}: disagrees with the trailer of pack {pack_id.hex()}")


def _verify_manifests(store, damaged_chunks, problems, progress, *, content: bool, picked) -> None:
    index = store.index
    for key in store.home.list("manifests"):
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            object_id = bytes.fromhex(name)
            if manifest_key(object_id) != key:
                raise ValueError
        except ValueError:
            problems.append(f"{key}: not a manifest name")
            continue
        data = store.home.read(key)
        try:
            manifest = decode_manifest(data, key)
        except CorruptObject as exc:
            problems.append(str(exc))
            continue
        if isinstance(manifest, TreeManifest):
            _verify_tree(store, key, object_id, data, manifest, problems)
        else:
            _verify_file(store, index, key, object_id, manifest, damaged_chunks, problems, progress,
                         content=content and picked())


def _verify_tree(store, key, tree_id, data, manifest: TreeManifest, problems) -> None:
    if tree_digest(data) != tree_id:
        problems.append(f"{key}: tree manifest does not hash to its name")
    for entry in manifest.entries:
        try:
            listed = store.read_manifest(format_id(entry.file))
        except (NotFound, CorruptObject):
            problems.append(f"{key}: {entry.path} names {format_id(entry.file)}, which is missing or damaged")
            continue
        if not isinstance(listed, FileManifest) or listed.size != entry.size:
            problems.append(f"{key}: {entry.path} does not match the manifest of {format_id(entry.file)}")


def _verify_file(store, index, key, file_id, manifest: FileManifest, damaged_chunks, problems, progress, *,
                 content: bool) -> None:
    for chunk, length in manifest.chunks:
        if chunk not in index or index[chunk].length != length:
            problems.append(f"{key}: chunk {format_id(chunk)} is not in the index with length {length}")
            return
        if chunk in damaged_chunks:
            problems.append(f"{key}: file {format_id(file_id)} uses damaged chunk {format_id(chunk)}")
            return
    if not content:
        return
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    try:
        for segment in store.read_segments(manifest):
            hasher.update(segment)
            progress(len(segment))
    except (NotFound, CorruptObject) as exc:
        problems.append(f"{key}: cannot read file {format_id(file_id)}: {exc}")
        return
    if hasher.digest() != file_id:
        problems.append(f"{key}: content does not hash to the file's id")
