"""Store.load: tensors straight from the store, equal to what the safetensors library loads."""

import importlib.util
import json
import os
import re
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
from conftest import guards_match_hot_packs, make_tree, snapshot
from test_tensorfile import INVALID, VALID, build, entry, random_tensors

import artifactstore.content.put
import artifactstore.serving.load
from artifactstore import CorruptObject, InvalidInput, InvalidParameter, NotFound, Store
from artifactstore._mapping import HUGE_PAGE_SIZE, FileMapping
from artifactstore.content.guard import checksum, decode_guard, encode_guard, guard_key
from artifactstore.content.index import ChunkIndex
from artifactstore.content.manifest import FileManifest, manifest_key
from artifactstore.content.pack import TARGET_SIZE, pack_key
from artifactstore.content.put import PACK_ALIGNMENT, PackSession
from artifactstore.demo import Version, adapter_history, lora_tensors, write_bundle
from artifactstore.ids import format_id, parse_id
from artifactstore.serving.load import NUMPY_DTYPES, usable_cpus


def put_bytes(store, path, data: bytes) -> str:
    path.write_bytes(data)
    return store.put(path).id


def library_view(data: bytes) -> dict[str, tuple[str, list[int], bytes]]:
    """name -> (dtype, shape, bytes) as the reference implementation reads the file."""
    return {name: (view["dtype"], view["shape"], bytes(view["data"])) for name, view in safetensors.deserialize(data)}


def assert_numpy_matches_library(loaded: dict, data: bytes) -> None:
    expected = library_view(data)
    assert loaded.keys() == expected.keys()
    for name, (dtype, shape, raw) in expected.items():
        array = loaded[name]
        assert isinstance(array, np.ndarray)
        if NUMPY_DTYPES.get(dtype) is None:
            assert array.dtype == np.uint8 and array.shape == (len(raw),)
        else:
            assert array.dtype == np.dtype(NUMPY_DTYPES[dtype]) and list(array.shape) == shape
        assert array.tobytes() == raw


def assert_same_arrays(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for name, array in theirs.items():
        assert (ours[name].dtype, ours[name].shape) == (array.dtype, array.shape)
        assert ours[name].tobytes() == array.tobytes()


def base_buffer(array: np.ndarray):
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def mapped_fraction(array: np.ndarray) -> float:
    """The share of an array's bytes on pages mapped from pack files (the rest was read)."""
    root = base_buffer(array)
    mapping = getattr(root.base, "obj", None)
    if not isinstance(mapping, FileMapping) or not array.nbytes:
        return 0.0
    begin = array.ctypes.data - root.ctypes.data
    end = begin + array.nbytes
    return sum(max(0, min(end, offset + length) - max(begin, offset)) for offset, length in mapping.mapped) / array.nbytes


def test_random_files_of_every_dtype_match_the_library(store, tmp_path):
    rng = np.random.default_rng(7)
    for index in range(40):
        tensors = random_tensors(rng)
        metadata = {"format": "np", "index": str(index)} if index % 3 == 0 else None
        data = safetensors.numpy.save(tensors, metadata=metadata)
        loaded = store.load(put_bytes(store, tmp_path / f"{index}.safetensors", data))
        assert_numpy_matches_library(loaded, data)
        assert_same_arrays(loaded, tensors)
        if len(loaded) > 1:
            assert len({id(base_buffer(a)) for a in loaded.values() if a.size}) <= 1  # views of one buffer


def test_equal_to_safetensors_numpy_load_file(store, tmp_path):
    rng = np.random.default_rng(8)
    loadable = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
                np.float16, np.float32, np.float64, np.complex64]  # what safetensors.numpy can return
    tensors = {f"{np.dtype(t).name}.{shape}": rng.integers(0, 256, np.prod(shape, dtype=int) * np.dtype(t).itemsize,
                                                            dtype=np.uint8).view(t).reshape(shape)
               for t in loadable for shape in [(), (0,), (3, 0), (5,), (7, 3)]}
    path = tmp_path / "all.safetensors"
    safetensors.numpy.save_file(tensors, path, metadata={"k": "v"})
    assert_same_arrays(store.load(store.put(path).id), safetensors.numpy.load_file(path))


TOO_LARGE_FOR_NUMPY = "zero dimension before huge ones"  # numpy refuses the shape, as safetensors.numpy does


@pytest.mark.parametrize("case", sorted(set(VALID) - {TOO_LARGE_FOR_NUMPY}))
def test_edge_cases_of_the_format(store, tmp_path, case):
    file = build(*VALID[case])
    assert_numpy_matches_library(store.load(put_bytes(store, tmp_path / "f", file)), file)


def test_a_shape_numpy_cannot_hold_is_invalid_input(store, tmp_path):
    file_id = put_bytes(store, tmp_path / "f", build(*VALID[TOO_LARGE_FOR_NUMPY]))
    with pytest.raises(InvalidInput, match="tensor 'z' of shape \\[0, 4294967296, 4294967296\\] cannot be a numpy"):
        store.load(file_id)
    if importlib.util.find_spec("torch") is not None:
        assert store.load(file_id, framework="torch")["z"].shape == (0, 2**32, 2**32)


def test_unaligned_tensors_and_a_header_spanning_several_chunks(store, tmp_path):
    values = np.arange(5, dtype=np.float64)
    header = {"__metadata__": {"padding": "x" * 300_001},  # odd-sized header spanning chunks
              "a": entry("U8", [3], 0, 3), "b": entry("F64", [5], 3, 43), "c": entry("C64", [], 43, 51)}
    file = build(json.dumps(header), b"abc" + values.tobytes() + np.complex64(1 + 2j).tobytes())
    path = tmp_path / "odd.safetensors"
    loaded = store.load(put_bytes(store, path, file))
    assert_numpy_matches_library(loaded, file)
    assert_same_arrays(loaded, safetensors.numpy.load_file(path))
    assert loaded["b"].tolist() == values.tolist() and loaded["c"] == 1 + 2j


def test_multi_pack_file_deduplicated_and_sharing_chunks(store, tmp_path):
    rng = np.random.default_rng(3)
    tensors = {f"layer.{i}": rng.standard_normal((1024, 1100), dtype=np.float32) for i in range(10)}
    first = safetensors.numpy.save(tensors, metadata={"saved_by": "a"})
    assert len(first) > TARGET_SIZE
    first_id = put_bytes(store, tmp_path / "first.safetensors", first)
    assert store.stats().packs > 1
    assert put_bytes(store, tmp_path / "again.safetensors", first) == first_id
    resaved = safetensors.numpy.save(tensors, metadata={"saved_by": "a different tool"})
    resaved_id = put_bytes(store, tmp_path / "resaved.safetensors", resaved)
    assert store.put(tmp_path / "resaved.safetensors").new_bytes == 0
    for object_id, data in ((first_id, first), (resaved_id, resaved)):
        assert_same_arrays(store.load(object_id), tensors)
        assert_numpy_matches_library(store.load(object_id), data)
    if importlib.util.find_spec("torch") is not None:
        from safetensors.torch import load_file
        theirs = load_file(tmp_path / "first.safetensors")
        assert_same_torch_tensors(store.load(first_id, framework="torch"), theirs)
        assert_same_torch_tensors(store.load(first_id, framework="torch", names=["layer.4", "layer.9"]),
                                  {name: theirs[name] for name in ("layer.4", "layer.9")})


def test_names_read_only_the_chunks_holding_them(store, tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    tensors = {f"t{i}": rng.standard_normal((256, 1024), dtype=np.float32) for i in range(20)}
    file_id = put_bytes(store, tmp_path / "w.safetensors", safetensors.numpy.save(tensors))
    read = []
    first_damaged = artifactstore.serving.load._first_damaged

    def counting_first_damaged(data, checks):
        read.extend([*checks.lengths.tolist(), *(length for *_, length in checks.unvouched)])
        return first_damaged(data, checks)

    monkeypatch.setattr(artifactstore.serving.load, "_first_damaged", counting_first_damaged)
    loaded = store.load(file_id, names=["t7", "t3"])
    assert_same_arrays(loaded, {"t3": tensors["t3"], "t7": tensors["t7"]})
    assert sum(read) < 3 * tensors["t3"].nbytes  # two tensors, the header, chunk edges: not 20 tensors
    assert store.load(file_id, names=[]) == {}
    with pytest.raises(NotFound, match="no tensor 'nope', 'zz' in"):
        store.load(file_id, names=["t1", "zz", "nope"])
    with pytest.raises(InvalidParameter, match="not the string"):
        store.load(file_id, names="t1")


def test_trees_and_refs_load_every_adapter_weights_file(store, tmp_path):
    tensors = lora_tensors(range(2), seed=1, scale=16)
    version = Version("v1.0.0", "test adapter", tensors, {"format": "pt"}, {"temperature": 0.3})
    bundle = write_bundle(version, tmp_path / "bundle")
    store.push(bundle, "acme/support@v1.0.0", actor="ci@agency")
    store.promote("acme/support@v1.0.0", actor="ci@agency")
    for ref in ("acme/support@v1.0.0", "acme/support@production", store.resolve("acme/support@v1.0.0")):
        assert_same_arrays(store.load(ref), tensors)

    extra = {"extra.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    (bundle / "adapter_weights" / "more").mkdir()
    safetensors.numpy.save_file(extra, bundle / "adapter_weights" / "more" / "extra.safetensors")
    safetensors.numpy.save_file({"ignored": np.zeros(1)}, bundle / "elsewhere.safetensors")
    assert_same_arrays(store.load(store.put(bundle).id), {**tensors, **extra})

    safetensors.numpy.save_file({next(iter(tensors)): np.zeros(1)}, bundle / "adapter_weights" / "dup.safetensors")
    with pytest.raises(InvalidInput, match="is in both adapter_weights/adapter_model.safetensors and "
                                           "adapter_weights/dup.safetensors"):
        store.load(store.put(bundle).id)

    no_weights = store.put(make_tree(tmp_path / "plain", {"adapter_weights/adapter_config.json": b"{}"})).id
    with pytest.raises(NotFound, match=r"has no adapter_weights/\*.safetensors file"):
        store.load(no_weights)
    with pytest.raises(NotFound):
        store.load("acme/support@v9.0.0")


CASES_THROUGH_LOAD = ["empty file", "no length prefix", "header past end of file", "not UTF-8", "invalid JSON",
                      "header is an array", "duplicate __metadata__", "unknown dtype", "negative dimension",
                      "hole between tensors", "overlapping tensors", "size does not match shape", "trailing bytes",
                      "tensor past end of file", "F4 half byte", "nesting past serde_json's limit"]


@pytest.mark.parametrize("case", CASES_THROUGH_LOAD)
def test_malformed_files_are_refused_and_leave_the_store_unchanged(store, tmp_path, case):
    file, message = INVALID[case]
    file_id = put_bytes(store, tmp_path / "bad.safetensors", file)
    before = snapshot(store.path)
    with pytest.raises(InvalidInput, match=re.escape(message)) as raised:
        store.load(file_id)
    assert str(raised.value).startswith(file_id)
    assert snapshot(store.path) == before


def flip_byte_of_chunk(store, chunk: bytes) -> str:
    location = store.index[chunk]
    path = store.backend.path(pack_key(location.pack))
    data = bytearray(path.read_bytes())
    data[location.offset + location.length // 2] ^= 0x40
    path.chmod(0o644)
    path.write_bytes(data)
    return pack_key(location.pack)


@pytest.mark.parametrize("where", ["data", "header"])
def test_damaged_chunk_raises_corrupt_object_naming_chunk_and_pack(store, tmp_path, where):
    rng = np.random.default_rng(5)
    tensors = {f"t{i}": rng.standard_normal((128, 1024), dtype=np.float32) for i in range(8)}
    file_id = put_bytes(store, tmp_path / "w.safetensors", safetensors.numpy.save(tensors))
    chunks = store.read_manifest(file_id).chunks
    chunk = chunks[-1][0] if where == "data" else chunks[0][0]
    pack = flip_byte_of_chunk(store, chunk)
    result = None
    with pytest.raises(CorruptObject, match=f"chunk {format_id(chunk)} in {re.escape(pack)} is damaged"):
        result = store.load(file_id)
    assert result is None
    if where == "data":  # a load that does not need the damaged chunk still succeeds
        assert_same_arrays(store.load(file_id, names=["t0"]), {"t0": tensors["t0"]})


def test_truncated_or_missing_pack(store, tmp_path):
    file_id = put_bytes(store, tmp_path / "w.safetensors",
                        safetensors.numpy.save({"w": np.ones((512, 512), dtype=np.float32)}))
    store.load(file_id)  # the store's loader remembers how it loaded the file: it must notice the change
    path = store.backend.path(pack_key(store.index[store.read_manifest(file_id).chunks[-1][0]].pack))
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptObject, match="is truncated"):
        store.load(file_id)
    path.unlink()
    with pytest.raises(NotFound, match="is missing from the store"):  # as Store.get says it
        store.load(file_id)


def test_a_new_store_locates_a_files_chunks_in_the_index_records(store, tmp_path):
    rng = np.random.default_rng(8)
    tensors = {f"t{i}": rng.standard_normal((128, 1024), dtype=np.float32) for i in range(8)}
    file_id = put_bytes(store, tmp_path / "w.safetensors", safetensors.numpy.save(tensors))
    fresh = Store(store.path)
    assert_same_arrays(fresh.load(file_id), tensors)
    assert fresh.content.index._unsorted is not None, "searched as read, not sorted into the dicts"


@pytest.mark.parametrize("damage", ["length", "unknown chunk"])
def test_a_chunk_the_index_contradicts_is_named(store, tmp_path, damage):
    rng = np.random.default_rng(9)
    tensors = {f"t{i}": rng.standard_normal((128, 1024), dtype=np.float32) for i in range(8)}
    file_id = put_bytes(store, tmp_path / "w.safetensors", safetensors.numpy.save(tensors))
    manifest = store.read_manifest(file_id)
    chunks = list(manifest.chunks)
    middle = len(chunks) // 2  # not a header chunk: located with the others, all at once
    (chunk, length), (after, after_length) = chunks[middle:middle + 2]
    if damage == "length":  # two lengths changed, the file's size kept
        chunks[middle:middle + 2] = [(chunk, length + 1), (after, after_length - 1)]
        message = f"chunk {format_id(chunk)}: index length {length}, manifest {length + 1}"
    else:
        unknown = bytes(reversed(chunk))
        chunks[middle] = (unknown, length)
        message = f"chunk {format_id(unknown)} is missing from the store"
    path = store.backend.path(manifest_key(parse_id(file_id)))
    path.chmod(0o644)
    path.write_bytes(FileManifest(manifest.size, chunks).encode())
    for loader in (Store(store.path), store):  # chunks searched for in the index records, or in the dicts
        with pytest.raises(CorruptObject, match=re.escape(message)):
            loader.load(file_id)


def test_a_chunk_with_a_copy_in_each_tier_is_loaded_from_the_hot_one(tmp_path):
    """tier evicts a pack after copying its hot chunks into a new hot pack: the index lists such a
    chunk's cold copy first."""
    history = {version.name: version for version in adapter_history(layers=4, scale=8)}
    store = Store.init(tmp_path / "store", cold=str(tmp_path / "cold"), keep_hot=1)
    for name in ("v1.0.0", "v1.1.0", "v1.2.0"):
        store.push(write_bundle(history[name], tmp_path / name), f"acme/support@{name}")
    store.promote("acme/support@v1.0.0")
    assert "acme/support@v1.2.0" in store.tier().hot_versions
    looked_at = Store(store.path).content
    weights = next(entry.file for entry in looked_at.read_manifest(store.resolve("acme/support@v1.2.0")).entries
                   if entry.path.endswith(".safetensors"))
    copies = [looked_at.index.all_locations(chunk) for chunk, _ in looked_at.read_manifest(format_id(weights)).chunks]
    assert any(len(found) > 1 and found[0].pack not in looked_at.hot_packs for found in copies)
    for pack in (tmp_path / "cold" / "packs").rglob("*.pack"):  # a load that took a cold copy would fail
        pack.unlink()
    for loader in (Store(store.path), store):
        assert_same_arrays(loader.load("acme/support@v1.2.0"), history["v1.2.0"].tensors)


def test_packs_that_are_not_local_files_are_read_through_the_store(store, tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    tensors = {f"t{i}": rng.standard_normal((64, 1024), dtype=np.float32) for i in range(6)}
    file_id = put_bytes(store, tmp_path / "w.safetensors", safetensors.numpy.save(tensors))
    cold = tmp_path / "cold"  # stands for another tier, e.g. object storage
    cold.mkdir()
    for pack in {store.index[chunk].pack for chunk, _ in store.read_manifest(file_id).chunks}:
        store.backend.path(pack_key(pack)).rename(cold / pack.hex())

    def read_cold_pack(pack: bytes, offset: int, length: int) -> bytes:
        with open(cold / pack.hex(), "rb") as f:
            f.seek(offset)
            return f.read(length)

    monkeypatch.setattr(store.content, "read_pack", read_cold_pack)
    assert_same_arrays(store.load(file_id), tensors)


def multi_pack_file(store, tmp_path) -> tuple[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(13)
    tensors = {f"layer.{i}": rng.standard_normal((1024, 1100), dtype=np.float32) for i in range(10)}
    return put_bytes(store, tmp_path / "big.safetensors", safetensors.numpy.save(tensors)), tensors


def packs_of(store, file_id: str) -> set[bytes]:
    return {store.index[chunk].pack for chunk, _ in store.read_manifest(file_id).chunks}


def test_tensors_are_copy_on_write_views_of_the_packs(store, tmp_path):
    file_id, tensors = multi_pack_file(store, tmp_path)
    before = snapshot(store.path)
    descriptors = len(os.listdir("/proc/self/fd"))
    loaded = store.load(file_id)
    assert len(os.listdir("/proc/self/fd")) == descriptors, "a mapping holds no file descriptor"
    assert_same_arrays(loaded, tensors)
    # every tensor is mapped but for the pages where its chunks change pack
    assert all(mapped_fraction(a) > 0.99 for a in loaded.values()), str([mapped_fraction(a) for a in loaded.values()])
    for array in loaded.values():
        array[:] = 0  # writable, and private to this process
    assert snapshot(store.path) == before
    assert_same_arrays(store.load(file_id), tensors)


def test_tensors_with_the_same_bytes_never_share_memory(store, tmp_path):
    rng = np.random.default_rng(14)
    block = {name: rng.standard_normal((256, 1024), dtype=np.float32) for name in "xyz"}
    tensors = {f"{i}.{name}": array for i in range(2) for name, array in block.items()}  # x y z x y z
    file_id = put_bytes(store, tmp_path / "twice.safetensors", safetensors.numpy.save(tensors))
    assert store.put(tmp_path / "twice.safetensors").new_bytes == 0
    stored = sum(e.length for p in packs_of(store, file_id) for e in store.index.pack_entries[p])
    assert stored < 0.7 * sum(a.nbytes for a in tensors.values()), "the second copy is deduplicated"
    frameworks = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") is not None else [])
    for framework in frameworks:
        loaded = store.load(file_id, framework=framework)
        for name in block:
            loaded[f"0.{name}"][:] = 0
            assert np.asarray(loaded[f"1.{name}"]).tobytes() == block[name].tobytes(), (framework, name)


def file_offsets(data: bytes) -> dict[str, int]:
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_size])
    return {name: 8 + header_size + view["data_offsets"][0] for name, view in header.items() if name != "__metadata__"}


@pytest.mark.parametrize("alignment", [PACK_ALIGNMENT, 64])  # 64: packs written before puts aligned to pages
def test_mapped_tensors_keep_the_files_alignment(store, tmp_path, monkeypatch, alignment):
    monkeypatch.setattr(artifactstore.content.put, "PACK_ALIGNMENT", alignment)
    rng = np.random.default_rng(15)
    first = {f"layer.{i}": rng.standard_normal((1024, 1100), dtype=np.float32) for i in range(10)}
    second = {name: (array if i % 2 else array + 1) for i, (name, array) in enumerate(first.items())}
    for version, tensors in (("v1", first), ("v2", second)):  # v2: every other tensor new, gaps between
        data = safetensors.numpy.save(tensors)
        tree = make_tree(tmp_path / version, {"a_config.json": b"{" + b" " * 37 + b"}",  # odd-sized, first
                                              "adapter_weights/adapter_model.safetensors": data})
        loaded = store.load(store.put(tree).id)
        assert_same_arrays(loaded, tensors)
        offsets = file_offsets(data)
        # v2's unchanged tensors begin and end in chunks new in v2 (they straddle a changed
        # neighbour), their middles in v1's packs: the pages of both are mapped side by side where
        # chunks lie at their file offsets modulo a page, else the ends are read
        fractions = {name: mapped_fraction(a) for name, a in loaded.items()}
        assert all(f > (0.95 if alignment == PACK_ALIGNMENT else 0.4) for f in fractions.values()), str(fractions)
        assert all(loaded[name].ctypes.data % 64 == offsets[name] % 64 for name in loaded), version
        assert all(array.flags.aligned for array in loaded.values()), version
    assert store.verify().ok


THP_BUILT = Path("/sys/kernel/mm/transparent_hugepage").is_dir()


def vm_flags(address: int) -> list[str]:
    """The kernel's flags of the mapping holding ``address`` (/proc/self/smaps' VmFlags)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1] in "0123456789abcdef" and "-" in line.split()[0]:
            begin, end = (int(x, 16) for x in line.split()[0].split("-"))
            inside = begin <= address < end
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise LookupError(f"no mapping holds {address:#x}")


def test_a_mapping_agrees_with_the_file_of_most_of_its_bytes_modulo_a_huge_page(tmp_path):
    """The kernel maps a huge page of the page cache whole only where the address and the file
    offset agree modulo its size: a mapping is placed so that its largest share of pieces do
    (pieces too short to hold a huge page have no say). Pieces that can hold one are advised
    MADV_HUGEPAGE, so that pages read from the disk come in huge folios too."""
    data = np.random.default_rng(16).integers(0, 256, 8 << 20, np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        for pieces in ([(fd, 4096, 8192, 2 << 20)],
                       [(fd, 0, 0, 8192), (fd, 3 << 20, 8192, 3 << 20), (fd, 4096, (3 << 20) + 8192, 1 << 20)],
                       [(fd, 4096, 0, 1 << 20)]):
            mapping = FileMapping(5 << 20, pieces)
            memory = np.frombuffer(mapping, np.uint8)
            _, file_offset, offset, length = max(pieces, key=lambda piece: piece[3])
            if length >= HUGE_PAGE_SIZE:
                assert (memory.ctypes.data + offset - file_offset) % HUGE_PAGE_SIZE == 0
            for _, file_offset, offset, length in pieces:
                assert memory[offset:offset + length].tobytes() == data[file_offset:file_offset + length]
                advised = "hg" in vm_flags(memory.ctypes.data + offset)
                assert advised == (length >= HUGE_PAGE_SIZE and THP_BUILT), (offset, length)
            memory[-1] = 7  # writable to its last byte
    finally:
        os.close(fd)


def test_a_new_files_tensors_agree_with_it_modulo_a_huge_page(store, tmp_path):
    """A put starts each pack at its file offset modulo a huge page, and a load places its
    mapping to match: every tensor lies at its file offset modulo the huge page."""
    file_id, tensors = multi_pack_file(store, tmp_path)
    assert len(packs_of(store, file_id)) > 1
    offsets = file_offsets((tmp_path / "big.safetensors").read_bytes())
    loaded = store.load(file_id)
    assert_same_arrays(loaded, tensors)
    assert all(array.ctypes.data % HUGE_PAGE_SIZE == offsets[name] % HUGE_PAGE_SIZE for name, array in loaded.items())


def test_threads_loading_at_once_from_a_new_store_find_every_chunk(store, tmp_path):
    """The first lookups of a new Store read its index: a thread must not search an index another
    thread is still reading (every chunk of the files not read yet was called missing)."""
    files = {}
    for k in range(4):
        tensors = {f"t{i}": np.random.default_rng(k).standard_normal((256, 1024), dtype=np.float32) for i in range(8)}
        files[put_bytes(store, tmp_path / f"f{k}.safetensors", safetensors.numpy.save(tensors))] = tensors
    for _ in range(20):
        fresh = Store(store.path)
        with ThreadPoolExecutor(len(files)) as pool:
            for loaded, tensors in zip(pool.map(fresh.load, files), files.values()):
                assert_same_arrays(loaded, tensors)


def test_a_put_beside_a_thread_reading_a_new_stores_index_is_read_back(store, tmp_path, monkeypatch):
    """Another thread publishes its index while a put runs on the one it had: the put's index file
    must be read by the index it was not added to (the waits below only order the threads)."""
    put_bytes(store, tmp_path / "a.bin", os.urandom(1 << 20))
    fresh = Store(store.path)
    listed, go = threading.Event(), threading.Event()
    read_files, commit = ChunkIndex.read_files, PackSession.commit

    def read_then_wait(index, backend):
        found = read_files(index, backend)
        if threading.current_thread().name == "loader":
            listed.set()
            go.wait(30)  # it has read the index files; it publishes its index once the put's packs are in
        return found

    def commit_then_let_it_publish(session):
        commit(session)
        go.set()
        loader.join(30)

    monkeypatch.setattr(ChunkIndex, "read_files", read_then_wait)
    monkeypatch.setattr(PackSession, "commit", commit_then_let_it_publish)
    loader = threading.Thread(target=lambda: fresh.content.index, name="loader")
    loader.start()
    listed.wait(30)
    data = os.urandom(1 << 20)
    object_id = put_bytes(fresh, tmp_path / "b.bin", data)
    fresh.get(object_id, tmp_path / "b.out")
    assert (tmp_path / "b.out").read_bytes() == data


def test_loads_in_several_threads_at_once_and_in_a_forked_child(store, tmp_path):
    """A loader's checker threads serve one load at a time: a load that finds them busy checks
    its runs itself. A forked child inherits no thread, and makes its own."""
    file_id, tensors = multi_pack_file(store, tmp_path)
    store.load(file_id)
    with ThreadPoolExecutor(3) as pool:
        for loaded in pool.map(lambda _: store.load(file_id), range(6)):
            assert_same_arrays(loaded, tensors)
    child = os.fork()
    if child == 0:  # the child: exit status 0 if its load matches, never pytest's cleanup
        status = 1
        try:
            signal.alarm(60)
            loaded = store.load(file_id)
            status = 0 if all(loaded[name].tobytes() == array.tobytes() for name, array in tensors.items()) else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_load_does_not_wait_for_checkers_busy_with_another(store, tmp_path, monkeypatch):
    """A load that finds the loader's checker threads busy checks its runs itself and returns
    without waiting for them."""
    monkeypatch.setattr(artifactstore.serving.load, "CHECKERS", 1)
    file_id, tensors = multi_pack_file(store, tmp_path)
    release = threading.Event()
    busy = store.loader._checkers._pool_here().submit(release.wait)  # another load's checks, say
    try:
        loading = ThreadPoolExecutor(1).submit(store.load, file_id)
        assert_same_arrays(loading.result(timeout=60), tensors)
        assert not busy.done()
    finally:
        release.set()


@pytest.mark.parametrize(("cpu_max", "cap"), [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000", 1),
                                             ("garbled", None), (None, None)])
def test_usable_cpus_follow_a_cgroup_quota(tmp_path, cpu_max, cap):
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    available = len(os.sched_getaffinity(0))
    assert usable_cpus(path) == (available if cap is None else min(available, cap))


def test_loaded_tensors_outlive_their_packs(store, tmp_path):
    file_id, tensors = multi_pack_file(store, tmp_path)
    loaded = store.load(file_id)
    for pack in packs_of(store, file_id):  # as gc or tier would remove them
        store.backend.delete(guard_key(pack))
        store.backend.delete(pack_key(pack))
    assert_same_arrays(loaded, tensors)


def rewrite_guard(store, pack: bytes, change) -> None:
    path = store.backend.path(guard_key(pack))
    path.chmod(0o644)
    path.write_bytes(change(path.read_bytes()))


def test_every_local_pack_has_a_guard_of_its_chunks(store, tmp_path):
    file_id, _ = multi_pack_file(store, tmp_path)
    for pack, entries in store.index.pack_entries.items():
        decoded = decode_guard(store.backend.read(guard_key(pack)), pack)
        guard = {o: (n, c) for o, n, c in zip(decoded.offsets.tolist(), decoded.lengths.tolist(),
                                               decoded.checksums.tolist())}
        data = store.backend.read(pack_key(pack))
        chunks = {e.offset: (e.length, checksum(data[e.offset:e.offset + e.length])) for e in entries}
        assert {offset: guard[offset] for offset in chunks} == chunks
        padding = {offset: value for offset, value in guard.items() if offset not in chunks}
        assert all(value == 0 and not any(data[offset:offset + n]) for offset, (n, value) in padding.items())
        assert decode_guard(store.backend.read(guard_key(pack)), bytes(32)) is None  # another pack's
    assert decode_guard(b"ARTGUARD", pack) is None


@pytest.mark.parametrize("damage", ["no guard", "guard damaged", "guard with a wrong checksum", "another pack's guard"])
def test_a_missing_or_wrong_guard_falls_back_to_blake3(store, tmp_path, monkeypatch, damage):
    file_id, tensors = multi_pack_file(store, tmp_path)
    packs = sorted(packs_of(store, file_id))
    guards = {pack: store.backend.read(guard_key(pack)) for pack in packs}
    for pack in packs:
        if damage == "no guard":
            store.backend.delete(guard_key(pack))
        elif damage == "guard damaged":
            rewrite_guard(store, pack, lambda data: data[:-1] + bytes([data[-1] ^ 1]))
        elif damage == "guard with a wrong checksum":
            entries = store.index.pack_entries[pack]
            rewrite_guard(store, pack, lambda _: encode_guard(pack, [(e.offset, e.length, 12345) for e in entries]))
        else:
            rewrite_guard(store, pack, lambda _: guards[packs[0] if pack != packs[0] else packs[1]])
    hashed = []
    blake3_hasher = artifactstore.serving.load.blake3.blake3
    monkeypatch.setattr(artifactstore.serving.load.blake3, "blake3", lambda *a, **k: (hashed.append(1), blake3_hasher(*a, **k))[1])
    assert_same_arrays(store.load(file_id), tensors)
    assert len(hashed) >= len(store.read_manifest(file_id).chunks)


def test_verify_reports_a_wrong_guard_and_repair_writes_guards(store, tmp_path):
    file_id, _ = multi_pack_file(store, tmp_path)
    wrong, missing = sorted(packs_of(store, file_id))
    good = store.backend.read(guard_key(wrong))
    rewrite_guard(store, wrong, lambda data: data[:-1] + bytes([data[-1] ^ 1]))
    store.backend.delete(guard_key(missing))  # as in a store written before guards
    report = store.verify()
    assert report.problems == [f"hot {guard_key(wrong)}: does not match its pack "
                               "(loads check that pack with BLAKE3 instead)"]
    repaired = store.verify(repair=True)
    assert repaired.ok and sorted(repaired.repaired) == sorted([
        f"hot {guard_key(wrong)}: rewritten from its verified pack", f"hot {guard_key(missing)}: written from its verified pack"])
    assert store.backend.read(guard_key(wrong)) == good and guards_match_hot_packs(store)


def test_parameters_are_checked_before_reading(store, tmp_path, monkeypatch):
    file_id = put_bytes(store, tmp_path / "w.safetensors", safetensors.numpy.save({"w": np.ones(3)}))
    with pytest.raises(InvalidParameter, match="unknown framework 'jax'"):
        store.load(file_id, framework="jax")
    with pytest.raises(InvalidParameter, match="needs framework='torch'"):
        store.load(file_id, device="cuda")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails as if not installed
    with pytest.raises(InvalidParameter, match=r"needs PyTorch.*pip install torch"):
        store.load(file_id, framework="torch")


# -- torch ----------------------------------------------------------------------------------------

def torch_bytes(tensor):
    import torch
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same_torch_tensors(ours: dict, theirs: dict) -> None:
    import torch
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert (ours[name].dtype, ours[name].shape) == (tensor.dtype, tensor.shape), name
        assert torch.equal(torch_bytes(ours[name]), torch_bytes(tensor)), name


def test_torch_tensors_match_safetensors_torch(store, tmp_path):
    pytest.importorskip("torch")
    from safetensors.torch import load_file
    rng = np.random.default_rng(11)
    for index in range(25):
        data = safetensors.numpy.save(random_tensors(rng))
        path = tmp_path / f"{index}.safetensors"
        loaded = store.load(put_bytes(store, path, data), framework="torch")
        assert_same_torch_tensors(loaded, load_file(path))
        storages = {t.untyped_storage().data_ptr() for t in loaded.values() if t.numel()}
        assert len(storages) <= 1  # views of one buffer
    f4 = build(json.dumps({"f": entry("F4", [2, 4], 0, 4), "u": entry("U8", [2], 4, 6)}), b"abcdef")
    path = tmp_path / "f4.safetensors"
    assert_same_torch_tensors(store.load(put_bytes(store, path, f4), framework="torch"),
                              load_file(path))
    odd = {"__metadata__": {"pad": "x" * 7}, "a": entry("U8", [1], 0, 1), "b": entry("BF16", [2], 1, 5),
           "z": entry("F32", [0, 3], 5, 5), "s": entry("I64", [], 5, 13)}
    file = build(json.dumps(odd), b"a" + b"\x00\x3f\x00\xc0" + np.int64(-9).tobytes())  # bf16 0.5, -2.0
    loaded = store.load(put_bytes(store, tmp_path / "odd.safetensors", file), framework="torch")
    assert loaded["b"].tolist() == [0.5, -2.0] and loaded["s"].item() == -9 and loaded["z"].shape == (0, 3)


def test_torch_device_is_checked(store, tmp_path):
    torch = pytest.importorskip("torch")
    file_id = put_bytes(store, tmp_path / "w.safetensors", safetensors.numpy.save({"w": np.ones(3)}))
    with pytest.raises(InvalidParameter, match="unknown device 'gpu'"):
        store.load(file_id, framework="torch", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameter, match="CUDA is not available"):
            store.load(file_id, framework="torch", device="cuda")


def test_cuda_tensors_equal_the_cpu_load(store, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(12)
    for index in range(10):
        file_id = put_bytes(store, tmp_path / f"{index}.safetensors", safetensors.numpy.save(random_tensors(rng)))
        on_device = store.load(file_id, framework="torch", device="cuda")
        assert all(t.device.type == "cuda" for t in on_device.values())
        assert_same_torch_tensors(on_device, store.load(file_id, framework="torch"))
    tensors = lora_tensors(range(2), seed=1, scale=16)
    file_id = put_bytes(store, tmp_path / "lora.safetensors", safetensors.numpy.save(tensors))
    subset = store.load(file_id, framework="torch", device="cuda:0", names=list(tensors)[3:5])
    assert_same_torch_tensors(subset, {k: v for k, v in store.load(file_id, framework="torch").items() if k in subset})
