"""Deleting versions and collecting garbage, alone, racing pushes, and killed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from conftest import guards_match_hot_packs, make_tree, random_bytes, snapshot

import artifactstore.lifecycle.gc
from artifactstore import Conflict, CorruptObject, InvalidParameter, NotFound, Store, StoreError
from artifactstore.backends.local import LocalBackend
from artifactstore.content.condemned import CONDEMNED_KEY, condemned_times
from artifactstore.content.manifest import manifest_key
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.ids import digest
from artifactstore.lifecycle.roots import ContentGraph, hot_chunks

HISTORY = adapter_history(layers=4, scale=8)


def unversioned_bundle(version, directory):
    """A bundle whose metadata names no version, so it can be pushed with --bump auto."""
    bundle = write_bundle(version, directory)
    metadata = yaml.safe_load((bundle / "metadata.yaml").read_text())
    metadata.pop("version")
    (bundle / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    return bundle


@pytest.fixture
def history_store(store, tmp_path):
    for version in HISTORY[:4]:
        store.push(write_bundle(version, tmp_path / "bundles" / version.name), f"acme/support@{version.name}")
    return store


def test_delete_is_refused_while_named_and_logged(history_store):
    history_store.promote("acme/support@v1.1.0")
    with pytest.raises(Conflict, match="still production: move the pointer first$"):
        history_store.delete("acme/support@v1.1.0")
    history_store.pin("acme/support@v1.0.0")
    with pytest.raises(Conflict, match="still pinned: unpin it first$"):
        history_store.delete("acme/support@v1.0.0")
    history_store.pin("acme/support@v1.1.0")
    with pytest.raises(Conflict, match="still production, pinned: move the pointer first and unpin it$"):
        history_store.delete("acme/support@v1.1.0")
    with pytest.raises(InvalidParameter):
        history_store.delete("acme/support@production")
    state = history_store.delete("acme/support@v1.2.0", actor="dpo@agency", reason="GDPR request 42")
    assert "v1.2.0" not in state.versions
    entry = history_store.log("acme/support")[-1]
    assert (entry.action, entry.from_, entry.actor, entry.reason) == ("delete", "v1.2.0", "dpo@agency", "GDPR request 42")
    assert history_store.verify().ok


def test_gc_condemns_then_deletes_and_keeps_everything_live(history_store, tmp_path):
    plain = make_tree(tmp_path / "plain", {"notes.bin": random_bytes(300_000, 3)})
    plain_id = history_store.put(plain).id
    before_delete = snapshot(history_store.path)
    assert not history_store.gc(grace="0s").condemned_packs, "nothing is garbage yet"
    history_store.delete("acme/support@v1.1.0")
    dry = history_store.gc(grace="0s", dry_run=True)
    assert dry.condemned_manifests and not dry.deleted_manifests
    first = history_store.gc(grace="0s")
    assert first.condemned_manifests == dry.condemned_manifests and first.pending_bytes > 0
    second = Store(history_store.path).gc(grace="0s")
    assert second.deleted_manifests == first.condemned_manifests and second.reclaimed_bytes > 0
    reopened = Store(history_store.path)
    assert reopened.verify().ok
    for version in ("v1.0.0", "v1.1.1", "v1.2.0"):  # v1.1.1 shares v1.1.0's weights: they must survive
        reopened.get(reopened.resolve(f"acme/support@{version}"), tmp_path / version)
        assert snapshot(tmp_path / version) == snapshot(tmp_path / "bundles" / version)
    reopened.get(plain_id, tmp_path / "plain-out")
    assert snapshot(tmp_path / "plain-out") == snapshot(plain)
    assert reopened.stats().stored_bytes < sum(len(v) for v in before_delete.values())


def test_a_plain_put_of_a_deleted_version_s_bundle_or_weights_is_kept(history_store, tmp_path):
    """gc takes a tree that only deleted versions named for garbage, and the files only it lists;
    the same bytes put outside the registry since are the user's (content/kept.py)."""
    bundle = tmp_path / "bundles" / "v1.2.0"
    weights = bundle / "adapter_weights" / "adapter_model.safetensors"
    deleted = history_store.version_record("acme/support@v1.2.0")["bundle"]
    history_store.delete("acme/support@v1.2.0")
    assert history_store.gc(grace="0s").condemned_manifests, "the deleted version's objects are garbage"
    assert history_store.put(bundle).id == deleted  # put after gc condemned it
    kept_weights = history_store.put(weights).id
    for _ in range(2):
        Store(history_store.path).gc(grace="0s")
    reopened = Store(history_store.path)
    assert reopened.verify().ok
    reopened.get(deleted, tmp_path / "bundle-out")
    assert snapshot(tmp_path / "bundle-out") == snapshot(bundle)
    reopened.get(kept_weights, tmp_path / "weights-out")
    assert (tmp_path / "weights-out").read_bytes() == weights.read_bytes()
    os.remove(reopened.path / manifest_key(bytes.fromhex(deleted[3:])))
    (reopened.path / "kept" / "notes.txt").write_bytes(b"")
    problems = " | ".join(Store(history_store.path).verify().problems)
    assert f"kept/{deleted[3:]}: " in problems and "kept/notes.txt: not a kept object's name" in problems


def test_a_delete_takes_back_a_put_of_the_same_bytes_made_before_it(history_store, tmp_path):
    """The later of a put and a delete wins: a version deleted (a data removal request) is
    reclaimed even if its bundle or weights were put outside the registry before."""
    bundle = tmp_path / "bundles" / "v1.2.0"
    put_before = [history_store.put(bundle).id, history_store.put(bundle / "adapter_weights" /
                                                                   "adapter_model.safetensors").id]
    history_store.delete("acme/support@v1.2.0")
    for _ in range(2):
        Store(history_store.path).gc(grace="0s")
    reopened = Store(history_store.path)
    assert reopened.verify().ok
    for object_id in put_before:
        with pytest.raises(NotFound):
            reopened.read_manifest(object_id)


def test_a_put_bundle_pushed_as_a_version_is_hot_only_while_its_version_is(tmp_path):
    history = {v.name: write_bundle(v, tmp_path / v.name) for v in HISTORY[:3]}
    store = Store.init(tmp_path / "store", cold=str(tmp_path / "cold"), keep_hot=1)
    store.put(history["v1.0.0"])
    for name, bundle in history.items():
        store.push(bundle, f"acme/support@{name}")
    store.promote("acme/support@v1.1.1")
    graph = ContentGraph.read(store.content)
    own = graph.chunks_of(graph.files_of({store.resolve("acme/support@v1.0.0")})) - graph.chunks_of(
        graph.files_of({store.resolve(f"acme/support@{name}") for name in ("v1.1.0", "v1.1.1")}))
    assert own and not own & hot_chunks(store.roots(), graph)


def test_a_young_object_is_never_touched(history_store):
    history_store.delete("acme/support@v1.1.0")
    report = history_store.gc(grace="1h")
    assert not report.condemned_manifests and not report.deleted_manifests


def test_bad_grace_is_refused(history_store):
    with pytest.raises(InvalidParameter, match="not a duration"):
        history_store.gc(grace="soon")


GC_LOOP = textwrap.dedent("""
    import sys, time
    from artifactstore import Store
    deadline = time.monotonic() + float(sys.argv[2])
    runs = 0
    while time.monotonic() < deadline:
        Store(sys.argv[1]).gc(grace="2s")
        runs += 1
        time.sleep(0.2)
    print(runs)
""")


def test_gc_racing_pushes_never_deletes_what_a_push_uses(history_store, tmp_path):
    """Pushes re-use the chunks of a deleted version while gc condemns and deletes them."""
    history_store.delete("acme/support@v1.1.0")
    old = unversioned_bundle(HISTORY[1], tmp_path / "again-v1.1.0")  # the deleted version's weights
    new = unversioned_bundle(HISTORY[3], tmp_path / "again-v1.2.0")
    time.sleep(2.1)  # make the deleted version's objects older than the grace period
    gc_loop = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(history_store.path), "8"],
                               stdout=subprocess.PIPE, text=True)
    pushed = []
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        for bundle in (old, new):
            pushed.append((Store(history_store.path).push(bundle, "acme/support", bump="auto").version, bundle))
    runs = int(gc_loop.communicate(timeout=60)[0])
    assert runs >= 2 and len(pushed) >= 4
    final = Store(history_store.path)
    final.gc(grace="2s")
    report = final.verify()
    assert report.ok, report.problems
    for version, bundle in pushed:
        target = tmp_path / "out" / version
        target.parent.mkdir(exist_ok=True)
        final.get(final.resolve(f"acme/support@{version}"), target)
        assert snapshot(target) == snapshot(bundle)


def age(store, seconds: float) -> None:
    """Move the store ``seconds`` into the past: every object's time and every condemnation's."""
    if store.backend.exists(CONDEMNED_KEY):
        condemned = {key: [when - seconds, modified and modified - seconds]
                     for key, (when, modified) in json.loads(store.backend.read(CONDEMNED_KEY)).items()}
        store.backend.write(CONDEMNED_KEY, json.dumps(condemned).encode())
    for path in store.path.rglob("*"):
        if path.is_file() and path.relative_to(store.path).parts[0] != "tmp":
            stat = path.stat()
            os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_what_a_young_dead_tree_names_waits_for_it(store, tmp_path):
    versions = {version.name: version for version in HISTORY}
    store.push(write_bundle(versions["v1.0.0"], tmp_path / "b0"), "acme/support@v1.0.0")
    store.push(write_bundle(versions["v1.1.0"], tmp_path / "b1"), "acme/support@v1.1.0")
    age(store, 7200)
    store.push(write_bundle(versions["v1.1.1"], tmp_path / "b2"), "acme/support@v1.1.1")  # v1.1.0's weights file
    store.delete("acme/support@v1.1.0")
    store.delete("acme/support@v1.1.1")
    first = Store(store.path).gc(grace="1h")  # condemns v1.1.0's objects; v1.1.1's tree is too young
    assert first.condemned_manifests and first.condemned_packs
    age(store, 7200)
    second = Store(store.path).gc(grace="1h")  # v1.1.0's weights file is due, but v1.1.1's tree names it
    assert second.deleted_manifests and second.condemned_manifests
    assert Store(store.path).verify().ok
    age(store, 7200)
    Store(store.path).gc(grace="1h")
    assert Store(store.path).verify().ok and guards_match_hot_packs(Store(store.path))
    assert Store(store.path).gc(grace="1h").condemned_manifests == []


class PowerCut(BaseException):
    """Stops a gc between two deletions, as kill -9 would."""


def test_gc_stopped_after_any_deletion_leaves_a_consistent_store(history_store, tmp_path, monkeypatch):
    history_store.delete("acme/support@v1.1.0")
    history_store.delete("acme/support@v1.0.0")
    history_store.gc(grace="0s")
    condemned = tmp_path / "condemned"
    shutil.copytree(history_store.path, condemned)
    unlink = LocalBackend.delete
    calls = []
    monkeypatch.setattr(LocalBackend, "delete", lambda backend, key: (calls.append(key), unlink(backend, key)))
    Store(history_store.path).gc(grace="0s")
    assert len(calls) >= 5
    for allowed in range(len(calls)):
        copy = tmp_path / f"stopped-{allowed}"
        shutil.copytree(condemned, copy)
        done = []

        def delete_until_cut(backend, key):
            if len(done) == allowed:
                raise PowerCut
            done.append(key)
            unlink(backend, key)

        monkeypatch.setattr(LocalBackend, "delete", delete_until_cut)
        with pytest.raises(PowerCut):
            Store(copy).gc(grace="0s")
        monkeypatch.setattr(LocalBackend, "delete", unlink)
        report = Store(copy).verify()
        assert report.ok, (done, report.problems)
        Store(copy).gc(grace="0s")
        assert Store(copy).verify().ok and guards_match_hot_packs(Store(copy))
        assert json.loads((copy / "gc" / "condemned.json").read_text()) == {}, allowed


def test_a_file_put_again_after_its_tree_went_is_kept_whatever_the_clocks_say(history_store, tmp_path, monkeypatch):
    history_store.delete("acme/support@v1.0.0")
    history_store.gc(grace="0s")  # condemns v1.0.0's tree and the files only it lists
    weights = tmp_path / "bundles" / "v1.0.0" / "adapter_weights" / "adapter_model.safetensors"
    file_key = manifest_key(digest(weights.read_bytes()))
    assert file_key in condemned_times(history_store.backend)
    unlink = LocalBackend.delete

    def delete_trees_only(backend, key):
        if key != file_key and key.startswith("manifests/") and b'"entries"' in backend.read(key):
            return unlink(backend, key)
        raise PowerCut

    monkeypatch.setattr(LocalBackend, "delete", delete_trees_only)
    with pytest.raises(PowerCut):
        Store(history_store.path).gc(grace="0s")  # stops after the dead tree went, before its files
    monkeypatch.setattr(LocalBackend, "delete", unlink)
    file_id = Store(history_store.path).put(weights).id  # a plain put of the same file: rewrites it
    path = history_store.path / file_key
    behind = condemned_times(history_store.backend)[file_key] - 100  # the storage's clock 100 s behind gc's
    os.utime(path, (behind, behind))
    for _ in range(2):
        Store(history_store.path).gc(grace="0s")
    final = Store(history_store.path)
    final.get(file_id, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == weights.read_bytes()
    assert final.verify().ok


def test_condemnations_recorded_by_the_previous_release_are_finished(history_store, monkeypatch):
    history_store.delete("acme/support@v1.0.0")
    history_store.gc(grace="0s")
    unlink = LocalBackend.delete

    def delete_trees_only(backend, key):
        if key.startswith("manifests/") and b'"entries"' in backend.read(key):
            return unlink(backend, key)
        raise PowerCut

    monkeypatch.setattr(LocalBackend, "delete", delete_trees_only)
    with pytest.raises(PowerCut):
        Store(history_store.path).gc(grace="0s")
    monkeypatch.setattr(LocalBackend, "delete", unlink)
    bare = {key: when for key, when in condemned_times(history_store.backend).items()}  # that release wrote bare times
    history_store.backend.write(CONDEMNED_KEY, json.dumps(bare).encode())
    for _ in range(2):
        Store(history_store.path).gc(grace="0s")
    assert condemned_times(Store(history_store.path).backend) == {}
    assert not any(key in bare for key in history_store.backend.list("manifests"))
    assert Store(history_store.path).verify().ok


def test_kill_during_gc_leaves_a_consistent_store(history_store, tmp_path):
    history_store.delete("acme/support@v1.1.0")
    history_store.delete("acme/support@v1.0.0")
    history_store.gc(grace="0s")
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "artifactstore", "gc", "--grace", "0s", "--store",
                                 str(history_store.path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2 + 0.1 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert Store(history_store.path).verify().ok
    Store(history_store.path).gc(grace="0s")
    final = Store(history_store.path)
    assert final.verify().ok
    final.get(final.resolve("acme/support@v1.2.0"), tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "bundles" / "v1.2.0")
    assert json.loads((history_store.path / "gc" / "condemned.json").read_text()) == {}


def test_a_push_during_the_sweep_keeps_what_it_rewrote(history_store, tmp_path, monkeypatch):
    """The sweep decides, then deletes; a push that re-writes condemned objects in between wins."""
    history_store.delete("acme/support@v1.1.0")
    history_store.delete("acme/support@v1.2.0")
    history_store.gc(grace="0s")
    bundle = tmp_path / "bundles" / "v1.2.0"
    repack = artifactstore.lifecycle.gc._repack

    def push_during_sweep(content, *args):
        repack(content, *args)
        Store(content.path).push(bundle, "acme/support@v1.2.0")  # another process, mid-sweep

    monkeypatch.setattr(artifactstore.lifecycle.gc, "_repack", push_during_sweep)
    Store(history_store.path).gc(grace="0s")
    final = Store(history_store.path)
    assert final.verify().ok
    final.get(final.resolve("acme/support@v1.2.0"), tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(bundle)


def test_a_long_lived_store_does_not_dedup_against_deleted_packs(tmp_path):
    writer = Store.init(tmp_path / "store")
    (tmp_path / "f").write_bytes(random_bytes(300_000, 8))
    file_id = writer.put(tmp_path / "f").id
    for key in list(writer.backend.list("manifests")):  # as if the put had died before its manifest
        writer.backend.delete(key)
    Store(writer.path).gc(grace="0s")
    assert Store(writer.path).gc(grace="0s").deleted_packs
    assert writer.put(tmp_path / "f").new_bytes == 300_000
    Store(writer.path).get(file_id, tmp_path / "out")


def test_a_push_landing_as_gc_reads_the_index_does_not_stop_it(history_store, tmp_path, monkeypatch):
    """gc reads the index after it marks: a version pushed meanwhile is either marked with its
    index file already durable, or not marked (and young). Found by a stress run of pushes beside
    gc, which refused 3 runs of 18 with "live chunk ... is in no index"."""
    bundle = unversioned_bundle(HISTORY[1], tmp_path / "next")
    read_index_files = artifactstore.lifecycle.gc.IndexFiles.read

    def push_after_reading(tier):
        files = read_index_files(tier)
        if not (tmp_path / "pushed").exists():
            (tmp_path / "pushed").touch()
            Store(history_store.path).push(bundle, "acme/other", bump="auto")  # another process
        return files

    monkeypatch.setattr(artifactstore.lifecycle.gc.IndexFiles, "read", push_after_reading)
    report = Store(history_store.path).gc(grace="0s")
    assert report.mark_passes >= 1 and (tmp_path / "pushed").exists()
    final = Store(history_store.path)
    assert final.verify().ok
    final.get(final.resolve("acme/other@latest"), tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(bundle)


def test_gc_refuses_to_run_on_a_damaged_index(store, tmp_path):
    (tmp_path / "f").write_bytes(random_bytes(300_000, 9))
    file_id = store.put(tmp_path / "f").id
    index_file = next((store.path / "index").iterdir())
    damaged = bytearray(index_file.read_bytes())
    damaged[20] ^= 0xFF
    index_file.write_bytes(bytes(damaged))
    with pytest.raises(StoreError, match="is damaged"):
        Store(store.path).gc(grace="0s")
    Store(store.path).put(tmp_path / "f")  # re-indexes the pack from its trailer
    Store(store.path).gc(grace="0s")
    Store(store.path).gc(grace="0s")
    Store(store.path).get(file_id, tmp_path / "out")


def test_repacking_refuses_to_copy_a_damaged_chunk(history_store):
    """v1.0.0's pack is mostly its own weights, but begins with adapter_config.json, which every
    later version shares: deleting v1.0.0 makes gc copy that chunk out, and it must check it."""
    history_store.delete("acme/support@v1.0.0")
    first_pack = min((history_store.path / "packs").rglob("*.pack"), key=lambda p: p.stat().st_mtime)
    data = bytearray(first_pack.read_bytes())
    data[5] ^= 1
    first_pack.write_bytes(bytes(data))
    with pytest.raises(CorruptObject, match="verify --repair"):
        Store(history_store.path).gc(grace="0s")


def test_a_long_lived_reader_reads_chunks_gc_moved_into_new_packs(history_store, tmp_path):
    reader = Store(history_store.path)
    assert set(reader.load("acme/support@v1.1.0")) == set(HISTORY[1].tensors)  # its index is read now
    history_store.delete("acme/support@v1.0.0")
    history_store.delete("acme/support@v1.2.0")
    first = Store(history_store.path).gc(grace="0s")
    second = Store(history_store.path).gc(grace="0s")
    assert first.repacked_bytes and second.deleted_packs, "the live chunks moved and their old pack went"
    tensors = reader.load("acme/support@v1.1.0")
    assert all((tensors[name] == HISTORY[1].tensors[name]).all() for name in HISTORY[1].tensors)
    reader.get(reader.resolve("acme/support@v1.1.1"), tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "bundles" / "v1.1.1")


def test_a_dry_run_reports_what_the_run_does_repacking_included(history_store):
    history_store.delete("acme/support@v1.0.0")
    history_store.delete("acme/support@v1.2.0")
    dry = Store(history_store.path).gc(grace="0s", dry_run=True)
    real = Store(history_store.path).gc(grace="0s")
    assert real.repacked_bytes > 0, "the case the dry run used to miss"
    for field in ("condemned_packs", "condemned_manifests", "pending_bytes", "repacked_bytes"):
        assert getattr(dry, field) == getattr(real, field), field
