"""A store shared by many machines through one bucket, each with its own hot cache."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import run_cli, snapshot

from artifactstore import Store, StoreError
from artifactstore.content.index import ChunkIndex, write_index
from artifactstore.content.pack import pack_key
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.ids import digest, format_id
from artifactstore.serving import Follower

HISTORY = adapter_history(layers=4, scale=8)


@pytest.fixture
def bucket_url(s3_bucket):
    return f"{s3_bucket}/registry"


@pytest.fixture
def bundles(tmp_path):
    return {v.name: write_bundle(v, tmp_path / "bundles" / v.name) for v in HISTORY}


def test_two_machines_share_one_bucket(tmp_path, bucket_url, bundles):
    machine_a = Store.init(bucket_url, cache=tmp_path / "cache-a")
    for name in ("v1.0.0", "v1.1.0", "v1.2.0"):
        machine_a.push(bundles[name], f"acme/support@{name}")
    machine_a.promote("acme/support@v1.1.0")
    assert not list(machine_a.content.home.list("pending")), "each push removed its session's marker"

    machine_b = Store(bucket_url, cache=tmp_path / "cache-b")
    assert machine_b.ls()[0]["production"] == "v1.1.0"
    first = machine_b.pull("acme/support@production")
    assert first.transferred_bytes == first.logical_bytes
    second = machine_b.pull("acme/support@v1.2.0")
    assert 0 < second.transferred_bytes < second.logical_bytes * 0.7, "half the layers are cached already"
    machine_b.get(machine_b.resolve("acme/support@v1.2.0"), tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(bundles["v1.2.0"])
    tensors = machine_b.load("acme/support@v1.2.0")
    assert set(tensors) == set(HISTORY[3].tensors)
    report = machine_b.verify()
    assert report.ok, report.problems


def test_a_follower_on_another_machine_sees_a_promote(tmp_path, bucket_url, bundles):
    writer = Store.init(bucket_url, cache=tmp_path / "cache-a")
    for name in ("v1.0.0", "v1.1.0"):
        writer.push(bundles[name], f"acme/support@{name}")
    writer.promote("acme/support@v1.0.0")
    server = Follower(Store(bucket_url, cache=tmp_path / "cache-b"), "acme/support@production", poll_interval=0.05)
    with server:
        writer.promote("acme/support@v1.1.0")
        assert server.wait_for("v1.1.0", timeout=10).version == "v1.1.0"
        writer.rollback("acme/support")
        server.wait_for("v1.0.0", timeout=10)


def test_followers_on_one_machine_download_a_version_once_and_map_the_cache(tmp_path, bucket_url, bundles):
    """Processes of one machine (one cache) following a shared store: the version they serve is
    fetched into the cache once, each chunk into one cached pack, and every process maps those."""
    writer = Store.init(bucket_url, cache=tmp_path / "cache-writer")
    writer.push(bundles["v1.0.0"], "acme/support@v1.0.0")
    writer.promote("acme/support@v1.0.0")
    cache = tmp_path / "cache-server"
    servers = [subprocess.Popen([sys.executable, "-m", "artifactstore", "follow", "acme/support@production",
                                 "--store", bucket_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "ARTIFACTSTORE_CACHE": str(cache)}) for _ in range(3)]
    try:
        for server in servers:
            assert json.loads(server.stdout.readline())["version"] == "v1.0.0"
            json.loads(server.stdout.readline())  # resident
        machine = Store(bucket_url, cache=cache)
        cached = [chunk for pack in machine.content.hot_packs for chunk in
                  (e.chunk for e in machine.index.pack_entries[pack])]
        bundle = machine.content.read_manifest(machine.resolve("acme/support@v1.0.0"))
        weights = {chunk for entry in bundle.entries if entry.path.endswith(".safetensors")
                   for chunk, _ in machine.content.read_manifest(format_id(entry.file)).chunks}
        assert sorted(cached) == sorted(weights), "each chunk of the weights once in the cache"
        for server in servers:
            maps = Path(f"/proc/{server.pid}/maps").read_text()
            assert str(cache / "packs") in maps, "the server maps the cache's packs"
    finally:
        for server in servers:
            server.stdin.close()
            server.wait()


RACER = textwrap.dedent("""
    import json, random, sys
    from artifactstore import Conflict, InvalidParameter, Store
    store = Store(sys.argv[1], cache=sys.argv[2])
    rng, won = random.Random(int(sys.argv[3])), 0
    for _ in range(8):
        try:
            store.promote(f"acme/support@{rng.choice(['v1.0.0', 'v1.1.0', 'v1.2.0'])}", actor=sys.argv[2])
            won += 1
        except (Conflict, InvalidParameter):
            pass
    print(json.dumps(won))
""")


def test_machines_racing_promotes_never_lose_an_update(tmp_path, bucket_url, bundles):
    store = Store.init(bucket_url, cache=tmp_path / "cache-0")
    for name in ("v1.0.0", "v1.1.0", "v1.2.0"):
        store.push(bundles[name], f"acme/support@{name}")
    racers = [subprocess.Popen([sys.executable, "-c", RACER, bucket_url, str(tmp_path / f"cache-{i}"), str(i)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(1, 5)]
    won = 0
    for racer in racers:
        out, err = racer.communicate(timeout=180)
        assert racer.returncode == 0, err
        won += json.loads(out)
    moves = [e for e in store.log("acme/support") if e.pointer == "production"]
    assert len(moves) == won > 0
    assert all(a.to == b.from_ for a, b in zip(moves, moves[1:])), "a lost update"
    assert store.state("acme/support").pointers["production"] == moves[-1].to
    assert Store(bucket_url, cache=tmp_path / "cache-9").verify().ok


def test_shared_store_from_the_command_line_and_gc(tmp_path, bucket_url, bundles, monkeypatch):
    monkeypatch.setenv("ARTIFACTSTORE_CACHE", str(tmp_path / "cli-cache"))
    assert run_cli("init", bucket_url).returncode == 0
    assert "already a store" in run_cli("init", bucket_url).stderr
    pushed = run_cli("push", bundles["v1.0.0"], "acme/support@v1.0.0", "--store", bucket_url, "--json")
    assert pushed.returncode == 0, pushed.stderr
    run_cli("push", bundles["v1.1.0"], "acme/support@v1.1.0", "--store", bucket_url)
    got = run_cli("get", "acme/support@v1.0.0", tmp_path / "out", "--store", bucket_url)
    assert got.returncode == 0 and snapshot(tmp_path / "out") == snapshot(bundles["v1.0.0"])
    config = json.loads(run_cli("config", "--store", bucket_url, "--json").stdout)
    assert config["store"] == bucket_url and config["hot"] == str(tmp_path / "cli-cache")

    store = Store(bucket_url)
    store.delete("acme/support@v1.0.0")
    store.gc(grace="0s")
    reclaimed = Store(bucket_url).gc(grace="0s")
    assert reclaimed.deleted_packs and reclaimed.reclaimed_bytes > 0
    final = Store(bucket_url)
    assert final.verify().ok
    final.get(final.resolve("acme/support@v1.1.0"), tmp_path / "v1.1.0")
    assert snapshot(tmp_path / "v1.1.0") == snapshot(bundles["v1.1.0"])


def test_gc_drops_collected_packs_from_the_cache_index(tmp_path, bucket_url, bundles):
    store = Store.init(bucket_url, cache=tmp_path / "cache")
    for name in ("v1.0.0", "v1.1.0"):
        store.push(bundles[name], f"acme/support@{name}")
    assert store.pull("acme/support@v1.0.0").transferred_bytes > 0  # cache packs, in the cache's index
    # a pull's pack can be byte for byte one of the bucket's (the same chunks in the same order),
    # so the cache can hold a copy of a bucket pack under its id: give it copies of all of them
    copies = [(pack, entries) for pack, entries in ChunkIndex.load(store.backend).pack_entries.items()]
    for pack, _ in copies:
        store.hot.write(pack_key(pack), store.backend.read(pack_key(pack)))
    write_index(store.hot, copies)
    store.delete("acme/support@v1.0.0")
    Store(bucket_url, cache=tmp_path / "cache").gc(grace="0s")
    assert Store(bucket_url, cache=tmp_path / "cache").gc(grace="0s").deleted_packs
    final = Store(bucket_url, cache=tmp_path / "cache")
    report = final.verify()
    assert report.ok, report.problems
    assert set(final.load("acme/support@v1.1.0")) == set(HISTORY[1].tensors)


def test_gc_refuses_while_the_cache_index_is_damaged(tmp_path, bucket_url, bundles):
    store = Store.init(bucket_url, cache=tmp_path / "cache")
    store.push(bundles["v1.0.0"], "acme/support@v1.0.0")
    store.push(bundles["v1.1.0"], "acme/support@v1.1.0")
    store.pull("acme/support@v1.0.0")
    index_file = next(store.hot.list("index"))
    store.hot.path(index_file).write_bytes(b"garbage")
    with pytest.raises(StoreError, match=f"index file {index_file} is damaged"):
        Store(bucket_url, cache=tmp_path / "cache").gc(grace="0s")


def dead_pack(store: Store) -> tuple[bytes, bytes]:
    """(pack id, its one chunk's bytes): a published, indexed pack no manifest names, as an abandoned
    put leaves one."""
    data = os.urandom(5000)
    with store.content.pack_session() as session:
        session.add(digest(data), data)
    return session.finished[0][0], data


def condemned_dead_pack(store: Store) -> tuple[bytes, bytes]:
    pack, data = dead_pack(store)
    time.sleep(1.1)  # the bucket's times are whole seconds: older than a grace of 0 s
    assert pack_key(pack) in store.gc(grace="0s").condemned_packs
    return pack, data


def test_while_one_machine_collects_no_other_collects_or_merges_index_files(tmp_path, bucket_url, monkeypatch):
    """Another machine's merge from a read taken before this gc's deletes would list a deleted pack:
    a put of its chunk would then store nothing and its file could not be read."""
    import artifactstore.lifecycle.gc as gc_module

    a = Store.init(bucket_url, cache=tmp_path / "cache-a")
    b = Store(bucket_url, cache=tmp_path / "cache-b")
    pack, data = condemned_dead_pack(a)
    for k in range(16):  # a put merges the index files from 16 on
        (tmp_path / f"f{k}").write_bytes(os.urandom(3000))
        a.put(tmp_path / f"f{k}")
    time.sleep(1.1)
    delete, counted = gc_module._delete, {}

    def meanwhile_on_b(*args, **kwargs):
        before = len(list(a.backend.list("index")))
        (tmp_path / "b-file").write_bytes(os.urandom(3000))
        b.put(tmp_path / "b-file")
        counted["index files"] = (before, len(list(a.backend.list("index"))))
        with pytest.raises(StoreError, match="the store's maintenance lease is held by"):
            b.gc(grace="0s")
        return delete(*args, **kwargs)

    monkeypatch.setattr(gc_module, "_delete", meanwhile_on_b)
    assert pack_key(pack) in a.gc(grace="0s").deleted_packs
    before, after = counted["index files"]
    assert after == before + 1, "B's put merged nothing"
    c = Store(bucket_url, cache=tmp_path / "cache-c")
    assert c.verify().ok
    (tmp_path / "same").write_bytes(data)
    stored = c.put(tmp_path / "same")
    assert stored.new_bytes == len(data)  # the deleted pack is in no index: stored anew
    c.get(stored.id, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


def test_a_gc_renews_its_lease_while_it_deletes_and_stops_once_another_machine_took_it(tmp_path, bucket_url,
                                                                                       monkeypatch):
    """A gc renews its lease every LEASE_RENEWAL while it deletes (here: before every delete). Once
    another machine took the lease (after an hour unrenewed: here at once), it deletes nothing more,
    and the new holder's gc finishes the work."""
    import artifactstore.content.lease as lease_module

    a = Store.init(bucket_url, cache=tmp_path / "cache-a")
    b = Store(bucket_url, cache=tmp_path / "cache-b")
    packs = [dead_pack(a)[0] for _ in range(3)]
    time.sleep(1.1)  # the bucket's times are whole seconds: older than a grace of 0 s
    assert {pack_key(p) for p in packs} <= set(a.gc(grace="0s").condemned_packs)
    time.sleep(1.1)
    monkeypatch.setattr(lease_module, "LEASE_RENEWAL", 0)
    monkeypatch.setattr(lease_module, "LEASE_SECONDS", 0)
    taken = []

    def after_each_delete(_: int) -> None:
        if not taken:
            taken.append(lease_module.StoreLease.take(b.content.home))

    with pytest.raises(StoreError, match="another machine took the store's maintenance lease"):
        a.gc(grace="0s", progress=after_each_delete)
    assert taken[0] is not None
    assert sum(a.backend.exists(pack_key(p)) for p in packs) == 2, "one pack deleted, then none"
    taken[0].release()
    assert {pack_key(p) for p in packs if a.backend.exists(pack_key(p))} <= set(b.gc(grace="0s").deleted_packs)
    assert not any(a.backend.exists(pack_key(p)) for p in packs)
    assert Store(bucket_url, cache=tmp_path / "cache-c").verify().ok


def test_a_gc_whose_lapsed_lease_another_machine_took_deletes_nothing(tmp_path, bucket_url, monkeypatch):
    import artifactstore.content.lease as lease_module
    import artifactstore.lifecycle.gc as gc_module

    a = Store.init(bucket_url, cache=tmp_path / "cache-a")
    b = Store(bucket_url, cache=tmp_path / "cache-b")
    pack, _ = condemned_dead_pack(a)
    time.sleep(1.1)
    monkeypatch.setattr(lease_module, "LEASE_SECONDS", 0)  # every lease lapses at once, as after an hour unrenewed
    sweep = gc_module._sweep

    def taken_meanwhile(*args, **kwargs):
        assert lease_module.StoreLease.take(b.content.home) is not None
        return sweep(*args, **kwargs)

    monkeypatch.setattr(gc_module, "_sweep", taken_meanwhile)
    with pytest.raises(StoreError, match="another machine took the store's maintenance lease"):
        a.gc(grace="0s")
    assert a.backend.exists(pack_key(pack))
