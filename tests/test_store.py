import json
import os
import stat
from collections import Counter
from itertools import accumulate

import blake3
import numpy as np
import pytest
from conftest import direct_io_taken, make_tree, random_bytes, resident_pages, run_cli, snapshot

from artifactstore import CorruptObject, InvalidInput, InvalidParameter, NotFound, Store, StoreError
from artifactstore.content import put
from artifactstore.content.condemned import write_condemned
from artifactstore.content.manifest import canonical_json, manifest_key
from artifactstore.content.pack import TARGET_SIZE
from artifactstore.content.put import HUGE_ALIGNMENT, PACK_ALIGNMENT, PACK_OVERRUN, PACK_START_SLACK
from artifactstore.ids import format_id, parse_id, tree_digest


def test_file_round_trip_and_id_is_the_blake3_of_the_content(store, tmp_path):
    data = random_bytes(3 << 20)
    (tmp_path / "w.bin").write_bytes(data)
    result = store.put(tmp_path / "w.bin")
    assert result.id == "b3:" + blake3.blake3(data).hexdigest()
    assert result.logical_bytes == result.new_bytes == len(data)
    store.get(result.id, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data


def test_tree_round_trip_keeps_paths_and_bytes(store, tmp_path):
    files = {"adapter_weights/adapter_model.safetensors": random_bytes(1 << 20, 1),
             "adapter_weights/adapter_config.json": b"{}", "empty": b"", "a/b/c/deep.txt": b"deep"}
    result = store.put(make_tree(tmp_path / "bundle", files))
    assert result.logical_bytes == sum(map(len, files.values()))
    store.get(result.id, tmp_path / "out")
    got = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
           for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert got == files
    assert store.verify().ok


def test_identify_gives_the_id_a_put_gives_without_reading_files_into_memory(store, tmp_path):
    """``identify`` (what a re-push compares) hashes each file from a mapping: its memory does not
    grow with the files' sizes."""
    import tracemalloc

    root = make_tree(tmp_path / "tree", {"weights.bin": random_bytes(32 << 20, 51), "empty": b"", "a/b.txt": b"b"})
    tracemalloc.start()
    try:
        identified = store.identify(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert identified == store.put(root).id
    assert store.identify(root / "empty") == store.put(root / "empty").id


def test_same_content_twice_stores_nothing_new(store, tmp_path):
    bundle = make_tree(tmp_path / "b", {"w": random_bytes(2 << 20, 2), "c.json": b"{}"})
    first = store.put(bundle)
    before = snapshot(store.path)
    again = store.put(bundle)
    assert again.id == first.id and again.new_bytes == 0
    assert snapshot(store.path) == before


def test_a_file_stored_again_rewrites_what_gc_condemned(store, tmp_path):
    """A re-put trusts a stored file only if gc is not about to delete its manifest or the packs of
    its chunks: chunks whose only copies are condemned are written again, a condemned manifest too."""
    data = random_bytes(3 << 20, 22)
    (tmp_path / "w").write_bytes(data)
    file_id = store.put(tmp_path / "w").id
    key = manifest_key(parse_id(file_id))
    packs = list(store.backend.list("packs"))
    write_condemned(store.backend, {k: [0.0, store.backend.modified(k)] for k in packs})
    for pack in packs:
        os.utime(store.backend.path(pack), (0, 0))
    assert store.put(tmp_path / "w").new_bytes == len(data)
    assert all(store.backend.modified(pack) > 0 for pack in packs), "the chunks were not written again"
    write_condemned(store.backend, {key: [0.0, store.backend.modified(key)]})
    os.utime(store.backend.path(key), (0, 0))
    assert store.put(tmp_path / "w").new_bytes == 0
    assert store.backend.modified(key) > 0, "the condemned manifest was not written again"
    store.get(file_id, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


def test_a_put_writes_its_packs_around_the_page_cache(store, tmp_path):
    """A put's new packs go to the disk with direct I/O where the file system takes it (the page
    cache then holds none of their pages but the last; elsewhere the writer goes through it), and
    they load and verify as any others."""
    direct = direct_io_taken(tmp_path)
    data = random_bytes(6 << 20, 41)
    (tmp_path / "f").write_bytes(data)
    object_id = store.put(tmp_path / "f").id
    packs = [store.backend.path(key) for key in store.backend.list("packs") if key.endswith(".pack")]
    assert packs
    for pack in packs:
        resident = resident_pages(pack)[:-1]  # the last: written through the cache either way
        assert not any(resident) if direct else all(resident)
    store.get(object_id, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    assert Store(store.path).verify().ok


def open_files_under(directory) -> list[str]:
    """The files under ``directory`` this process holds open."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # listdir's own descriptor, closed since
            pass
    return [path for path in paths if path.startswith(f"{directory}/")]


def test_a_put_that_meets_a_full_disk_anywhere_leaves_no_file_and_no_descriptor(store, tmp_path, monkeypatch):
    """The disk fills at each write of a put in turn (a run, padding, a trailer, a guard, the index,
    a manifest): the put fails, and neither a temporary file nor an open descriptor of the store's
    stays behind (each writer is discarded, its descriptor closed, not left to the garbage
    collector: the exception still holds the writers); a put then succeeds."""
    monkeypatch.setattr(put, "TARGET_SIZE", 1 << 20)  # several packs: failures in seals and publishes
    data = random_bytes(3 << 20, 61)
    (tmp_path / "f").write_bytes(data)
    real_pwrite, calls = os.pwrite, [0]

    def counting(fd, view, offset):
        calls[0] += 1
        return real_pwrite(fd, view, offset)

    rehearsal = Store.init(tmp_path / "rehearsal")
    monkeypatch.setattr(os, "pwrite", counting)
    rehearsal.put(tmp_path / "f")
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    writes = calls[0]
    assert writes >= 8  # runs, trailers, guards, the index, the manifest
    for failing in range(1, writes + 1):
        calls[0] = 0

        def full_disk(fd, view, offset, failing=failing):
            calls[0] += 1
            if calls[0] == failing:
                raise OSError(28, "No space left on device")
            return real_pwrite(fd, view, offset)

        fresh = Store.init(tmp_path / f"store{failing}")  # a failed put's published packs would be reused
        monkeypatch.setattr(os, "pwrite", full_disk)
        with pytest.raises(OSError, match="No space"):
            fresh.put(tmp_path / "f")
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        assert not open_files_under(fresh.path), failing  # the input's mapping goes with the exception
        assert list(fresh.backend.list("tmp")) == [], failing
    object_id = Store(store.path).put(tmp_path / "f").id
    store.get(object_id, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    assert Store(store.path).verify().ok


def test_pack_layout_keeps_file_offsets_modulo_the_alignment(store, tmp_path):
    """New chunks written in runs lie at their file offsets modulo PACK_ALIGNMENT, whatever lies
    between them in the file (chunks stored already) or in the pack (another file's chunks)."""
    first, second = random_bytes(1 << 20, 23), random_bytes(1 << 20, 24)
    (tmp_path / "a").write_bytes(first)
    stored = {chunk for chunk, _ in store.content.read_manifest(store.put(tmp_path / "a").id).chunks}
    (tmp_path / "b").write_bytes(random_bytes(12_345, 25) + first[:500_000] + second + first[500_000:])
    manifest = store.content.read_manifest(store.put(tmp_path / "b").id)
    offset, new = 0, 0
    for chunk, length in manifest.chunks:
        if chunk not in stored:
            assert store.content.index[chunk].offset % PACK_ALIGNMENT == offset % PACK_ALIGNMENT
            new += 1
        offset += length
    assert new > 10


def test_a_files_packs_keep_its_offsets_modulo_a_huge_page(store, tmp_path, monkeypatch):
    """A put closes a full pack where the next can start at its file offset modulo 2 MiB for
    little padding, and a large file that would begin out of step in the pack a small file opened
    begins a pack of its own: every chunk of a new file lies at its file offset modulo a huge page."""
    monkeypatch.setattr(put, "TARGET_SIZE", 4 << 20)
    tree = make_tree(tmp_path / "bundle", {"adapter_weights/adapter_config.json": b"{}" * 1000,
                                           "adapter_weights/adapter_model.safetensors": random_bytes(30 << 20, 31)})
    entries = store.content.read_manifest(store.put(tree).id).entries
    weights = next(entry for entry in entries if entry.path.endswith(".safetensors"))
    manifest = store.content.read_manifest(format_id(weights.file))
    offset, packs = 0, {}
    for chunk, length in manifest.chunks:
        location = store.content.index[chunk]
        assert (location.offset - offset) % HUGE_ALIGNMENT == 0
        packs.setdefault(location.pack, []).append((location.offset, length))
        offset += length
    assert len(packs) >= 4
    *full, last = (max(o + n for o, n in chunks) for chunks in packs.values())
    assert all(4 << 20 <= size < (4 << 20) + PACK_OVERRUN for size in full), full
    padding = sum(full) + last - offset
    assert padding <= PACK_START_SLACK * len(packs)


@pytest.mark.parametrize("seed", range(4))
def test_random_trees_round_trip_with_every_unshared_chunk_in_step(tmp_path, monkeypatch, seed):
    """Trees of small and large files cut from one pool of bytes (so that versions and files share
    chunks), some edited, put one after another into small packs: each comes back whole, the
    store verifies, and every chunk stored once lies at its file offset modulo a page."""
    monkeypatch.setattr(put, "TARGET_SIZE", 1 << 20)
    monkeypatch.setattr(put, "PACK_OVERRUN", 1 << 20)
    store = Store.init(tmp_path / "store")
    rng = np.random.default_rng(seed)
    pool = random_bytes(8 << 20, 100 + seed)
    placed = []  # (chunk, its file offset) of every chunk of every large file
    for version in range(3):
        files = {}
        for k in range(int(rng.integers(1, 5))):
            size = int(rng.choice([0, 100, 5000, 3 << 20, 5 << 20]))
            start = int(rng.integers(0, len(pool) - size + 1))
            data = bytearray(pool[start:start + size])
            if size > 8192 and rng.random() < 0.5:
                at = int(rng.integers(0, size - 4096))
                data[at:at + 4096] = random_bytes(4096, 1000 * seed + 10 * version + k)
            files[f"d{k}/f{k}.bin"] = bytes(data)
        result = store.put(make_tree(tmp_path / f"v{version}", files))
        store.get(result.id, tmp_path / f"out{version}")
        for name, data in files.items():
            assert (tmp_path / f"out{version}" / name).read_bytes() == data
        for entry in store.content.read_manifest(result.id).entries:
            manifest = store.content.read_manifest(format_id(entry.file))
            if manifest.size >= PACK_ALIGNMENT:
                offsets = [0, *accumulate(length for _, length in manifest.chunks)]
                placed += [(chunk, offset) for (chunk, _), offset in zip(manifest.chunks, offsets)]
    uses = Counter(chunk for chunk, _ in placed)
    unshared = [(chunk, offset) for chunk, offset in placed if uses[chunk] == 1]
    assert len(unshared) > 20, len(unshared)
    assert all(store.content.index[chunk].offset % PACK_ALIGNMENT == offset % PACK_ALIGNMENT for chunk, offset in unshared)
    assert store.verify().ok


def test_shared_content_is_stored_once(store, tmp_path):
    common = random_bytes(4 << 20, 3)
    store.put(make_tree(tmp_path / "a", {"w": common + random_bytes(1 << 20, 4)}))
    second = store.put(make_tree(tmp_path / "b", {"w": random_bytes(100, 5) + common}))
    assert second.new_bytes < 600 << 10
    stats = store.stats()
    assert stats.trees == 2 and stats.files == 2
    assert stats.logical_bytes == (5 << 20) + (4 << 20) + 100
    assert stats.chunk_bytes < (5 << 20) + (600 << 10)


def test_large_file_spans_several_packs(store, tmp_path):
    data = random_bytes(TARGET_SIZE + (8 << 20), 6)
    (tmp_path / "big").write_bytes(data)
    result = store.put(tmp_path / "big")
    assert store.stats().packs == 2
    store.get(result.id, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


def test_empty_file_and_empty_directory(store, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    file_id = store.put(tmp_path / "empty").id
    tree_id = store.put(tmp_path / "dir").id
    store.get(file_id, tmp_path / "e2")
    store.get(tree_id, tmp_path / "d2")
    assert (tmp_path / "e2").read_bytes() == b"" and list((tmp_path / "d2").iterdir()) == []


@pytest.mark.parametrize("make_bad", ["missing", "symlink", "symlink_inside", "dir_symlink_inside",
                                      "fifo_inside", "device", "backslash_name"])
def test_bad_input_changes_nothing(store, tmp_path, make_bad):
    bundle = make_tree(tmp_path / "bundle", {"ok.bin": random_bytes(300_000, 7)})
    if make_bad == "missing":
        target, error = tmp_path / "nope", NotFound
    elif make_bad == "symlink":
        target, error = tmp_path / "link", InvalidInput
        target.symlink_to(bundle / "ok.bin")
    elif make_bad == "symlink_inside":
        (bundle / "link").symlink_to(bundle / "ok.bin")
        target, error = bundle, InvalidInput
    elif make_bad == "dir_symlink_inside":
        (bundle / "linkdir").symlink_to(tmp_path)
        target, error = bundle, InvalidInput
    elif make_bad == "fifo_inside":
        os.mkfifo(bundle / "pipe")
        target, error = bundle, InvalidInput
    elif make_bad == "device":
        target, error = "/dev/null", InvalidInput
    else:
        (bundle / "a\\b").write_bytes(b"x")
        target, error = bundle, InvalidInput
    before = snapshot(store.path)
    with pytest.raises(error):
        store.put(target)
    assert snapshot(store.path) == before


def test_get_refuses_existing_destination_and_unknown_ids(store, tmp_path):
    (tmp_path / "f").write_bytes(b"hello")
    file_id = store.put(tmp_path / "f").id
    (tmp_path / "exists").write_bytes(b"keep")
    with pytest.raises(InvalidInput):
        store.get(file_id, tmp_path / "exists")
    assert (tmp_path / "exists").read_bytes() == b"keep"
    with pytest.raises(NotFound):
        store.get("b3:" + "0" * 64, tmp_path / "x")
    for bad in ("sha256:00", "b3:xyz", "b3:" + "A" * 64, ""):
        with pytest.raises(InvalidParameter):
            store.get(bad, tmp_path / "x")


def test_get_restores_a_tree_holding_a_partial_name_and_leaves_others_files_alone(store, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"one")
    (tree / ".a.partial").write_bytes(b"two")  # the name a get once staged "a" under
    store.get(store.put(tree).id, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tree)
    (tmp_path / ".b.partial").write_bytes(b"another get's file in progress")
    store.get(store.put(tree / "a").id, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"one"
    assert (tmp_path / ".b.partial").read_bytes() == b"another get's file in progress"


def test_a_put_of_a_file_whose_manifest_is_damaged_writes_the_manifest_again(store, tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(random_bytes(300_000, seed=9))
    file_id = store.put(weights).id
    manifest = store.backend.path(manifest_key(parse_id(file_id)))
    manifest.chmod(0o644)
    manifest.write_bytes(manifest.read_bytes()[:-7])  # torn: it no longer parses
    assert not Store(store.path).verify().ok
    assert Store(store.path).put(weights).id == file_id
    assert Store(store.path).verify().ok
    Store(store.path).get(file_id, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == weights.read_bytes()


def _plant_tree(store, entries) -> str:
    encoded = canonical_json({"kind": "tree", "entries": entries})
    tree_id = tree_digest(encoded)
    path = store.path / manifest_key(tree_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded)
    return format_id(tree_id)


@pytest.mark.parametrize("evil", ["../escape", "/etc/passwd", "a/../../escape", "a//b", "./a"])
def test_get_refuses_a_tree_whose_paths_escape(store, tmp_path, evil):
    (tmp_path / "f").write_bytes(b"payload")
    file_id = store.put(tmp_path / "f").id
    tree_id = _plant_tree(store, [{"path": evil, "size": 7, "file": file_id}])
    with pytest.raises(CorruptObject, match="unsafe path"):
        store.get(tree_id, tmp_path / "out" / "dest")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()
    assert not store.verify().ok


def _first_pack(store):
    return next((store.path / "packs").rglob("*.pack"))


def test_damaged_pack_is_detected_by_get_and_verify(store, tmp_path):
    data = random_bytes(1 << 20, 8)
    (tmp_path / "f").write_bytes(data)
    file_id = store.put(tmp_path / "f").id
    pack = _first_pack(store)
    os.chmod(pack, stat.S_IRUSR | stat.S_IWUSR)
    with open(pack, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptObject, match="damaged"):
        store.get(file_id, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))
    report = Store(store.path).verify()
    assert not report.ok
    assert any("at offset 0 is damaged" in p for p in report.problems)
    assert any(file_id in p for p in report.problems)


@pytest.mark.parametrize("damage", ["manifest", "index", "missing_pack", "trailer"])
def test_verify_names_each_damaged_object(store, tmp_path, damage):
    (tmp_path / "f").write_bytes(random_bytes(500_000, 9))
    file_id = store.put(tmp_path / "f").id
    if damage == "manifest":
        key = store.path / manifest_key(bytes.fromhex(file_id[3:]))
        manifest = json.loads(key.read_bytes())
        manifest["chunks"].reverse()
        key.write_bytes(canonical_json(manifest))
        expected = "does not hash to the file's id"
    elif damage == "index":
        index_file = next((store.path / "index").iterdir())
        index_file.write_bytes(index_file.read_bytes()[:-3])
        expected = index_file.name
    elif damage == "missing_pack":
        _first_pack(store).unlink()
        expected = "missing"
    else:
        pack = _first_pack(store)
        data = bytearray(pack.read_bytes())
        data[-20] ^= 0xFF
        pack.write_bytes(bytes(data))
        expected = pack.name
    report = Store(store.path).verify()
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems


def test_open_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not an artifactstore store"):
        Store(tmp_path)
    Store.init(tmp_path / "s")
    with pytest.raises(StoreError, match="already a store"):
        Store.init(tmp_path / "s")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StoreError, match="not an empty directory"):
        Store.init(tmp_path / "full")


def test_a_version_1_store_is_read_and_a_put_upgrades_it(store, tmp_path):
    first = store.put(make_tree(tmp_path / "a", {"w.bin": random_bytes(400_000, 1)})).id
    config_path = store.path / "artifactstore.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "version": 1}))  # as the previous release wrote it
    old = Store(store.path)
    assert old.effective_config()["format_version"] == 1
    old.get(first, tmp_path / "out")
    old.put(make_tree(tmp_path / "b", {"w.bin": random_bytes(400_000, 2)}))  # pads packs: version 2 only
    assert json.loads(config_path.read_text())["version"] == 3
    config_path.write_text(json.dumps({**config, "version": 4}))
    with pytest.raises(StoreError, match="unsupported store format: 4"):
        Store(store.path)


@pytest.mark.parametrize("damage", [("min_size", "min_sire"), ('"tiers"', '"ti%rs"'), ("keep_hot", "keep_hat"),
                                    ('"format"', '"formet"')])
def test_a_damaged_configuration_is_one_line_naming_the_file(store, damage):
    config = store.path / "artifactstore.json"
    config.write_text(config.read_text().replace(*damage, 1))
    for command in (["ls"], ["verify"], ["stats"], ["config"]):
        done = run_cli(*command, "--store", store.path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert "artifactstore.json" in done.stderr and "Traceback" not in done.stderr
