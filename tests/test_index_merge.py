"""Index files stay few: puts merge them once there are many, gc leaves one, nothing is lost."""

import fcntl
import json
import subprocess
import sys
import textwrap

from conftest import make_tree, random_bytes

from artifactstore import Store
from artifactstore.content.store import INDEX_FILES_MERGED_AT


def index_files(store: Store) -> list[str]:
    return list(store.backend.list("index"))


def put_many(store: Store, tmp_path, count: int, seed: int = 0) -> dict[str, bytes]:
    stored = {}
    for n in range(count):
        data = random_bytes(100_000, seed + n)
        source = make_tree(tmp_path / f"src-{seed + n}", {"f": data})
        stored[store.put(source / "f").id] = data
    return stored


def test_puts_merge_index_files_and_every_object_stays_readable(store, tmp_path):
    reader = Store(store.path)
    stored = put_many(store, tmp_path, 3 * INDEX_FILES_MERGED_AT)
    assert 1 <= len(index_files(store)) <= INDEX_FILES_MERGED_AT
    for n, (object_id, data) in enumerate(stored.items()):  # an old reader too: its files were merged away
        for who in (reader, Store(store.path)):
            who.get(object_id, tmp_path / f"out-{n}-{id(who)}")
            assert (tmp_path / f"out-{n}-{id(who)}").read_bytes() == data
    assert Store(store.path).verify().ok


def test_a_merge_waits_for_gc_and_gc_leaves_one_index_file(store, tmp_path):
    (store.path / "gc").mkdir(exist_ok=True)
    with open(store.path / "gc" / "lock", "a+b") as lock:  # a gc running in another process
        fcntl.flock(lock, fcntl.LOCK_EX)
        put_many(store, tmp_path, INDEX_FILES_MERGED_AT + 2)
        assert len(index_files(store)) == INDEX_FILES_MERGED_AT + 2, "no merge while gc holds the lock"
    report = Store(store.path).gc(grace="0s")
    assert not report.deleted_packs and len(index_files(store)) == 1
    assert Store(store.path).verify().ok


PUTTER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from artifactstore import Store
    store, seed, count, work = Store(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    stored = {}
    for n in range(count):
        data = np.random.default_rng(seed * 1000 + n).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
        path = work / f"{seed}-{n}"
        path.write_bytes(data)
        stored[store.put(path).id] = str(path)
    print(json.dumps(stored))
""")


def test_processes_putting_while_others_merge_lose_nothing(store, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", PUTTER, str(store.path), str(seed), "20", str(work)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    reopened = Store(store.path)
    assert reopened.verify().ok
    assert len(index_files(reopened)) <= INDEX_FILES_MERGED_AT + 2
    for out, _ in results:
        for object_id, path in json.loads(out).items():
            reopened.get(object_id, tmp_path / "check")
            assert (tmp_path / "check").read_bytes() == open(path, "rb").read()
            (tmp_path / "check").unlink()
