import json
import stat
import subprocess
import sys

from conftest import make_tree, random_bytes, run_cli, snapshot


def test_init_put_get_stats_verify(tmp_path):
    store = tmp_path / "store"
    assert run_cli("init", store).returncode == 0
    bundle = make_tree(tmp_path / "bundle", {"w.bin": random_bytes(1 << 20, 20), "c.json": b"{}"})
    put = run_cli("put", bundle, "--store", store, "--json")
    assert put.returncode == 0, put.stderr
    result = json.loads(put.stdout)
    assert set(result) == {"id", "logical_bytes", "new_bytes"} and result["id"].startswith("b3:")
    assert result["logical_bytes"] == (1 << 20) + 2 and put.stderr == ""

    plain = run_cli("put", bundle, env={"ARTIFACTSTORE_STORE": str(store)})
    assert plain.stdout.strip() == result["id"]
    assert "0 B new" in plain.stderr

    got = run_cli("get", result["id"], tmp_path / "out", "--store", store)
    assert got.returncode == 0, got.stderr
    assert snapshot(tmp_path / "out") == snapshot(bundle)

    stats = json.loads(run_cli("stats", "--store", store, "--json").stdout)
    assert {"logical_bytes", "stored_bytes", "chunks", "packs"} <= set(stats)
    assert stats["logical_bytes"] == (1 << 20) + 2 and stats["packs"] == 1
    assert "dedup" in run_cli("stats", "--store", store).stdout

    verify = run_cli("verify", "--store", store, "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout) == {"ok": True, "problems": [], "repaired": []}


def test_verify_exits_non_zero_naming_the_damage(tmp_path):
    store = tmp_path / "store"
    run_cli("init", store)
    (tmp_path / "f").write_bytes(random_bytes(200_000, 21))
    run_cli("put", tmp_path / "f", "--store", store)
    pack = next((store / "packs").rglob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[10] ^= 1
    pack.write_bytes(bytes(data))
    result = run_cli("verify", "--store", store, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and any(pack.name in p for p in report["problems"])
    human = run_cli("verify", "--store", store)
    assert human.returncode == 1 and pack.name in human.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    store = tmp_path / "store"
    run_cli("init", store)
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    cases = [
        (("put", tmp_path / "missing", "--store", store), "no such file or directory"),
        (("put", tmp_path / "link", "--store", store), "symlinks are not stored"),
        (("put", "/dev/null", "--store", store), "not a regular file"),
        (("get", "b3:zz", tmp_path / "o", "--store", store), "not a content id"),
        (("get", "b3:" + "0" * 64, tmp_path / "o", "--store", store), "no object"),
        (("stats", "--store", tmp_path), "not an artifactstore store"),
        (("init", store), "already a store"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_missing_store_option_is_a_usage_error(tmp_path):
    result = run_cli("stats", env={"ARTIFACTSTORE_STORE": ""})
    assert result.returncode == 2 and "--store" in result.stderr and "Traceback" not in result.stderr


def test_store_before_or_after_the_command_or_from_the_environment(tmp_path):
    store = tmp_path / "store"
    assert run_cli("init", store).returncode == 0
    for args, env, source in ((["--store", store, "config", "--json"], None, "--store"),
                              (["config", "--store", store, "--json"], None, "--store"),
                              (["config", "--json"], {"ARTIFACTSTORE_STORE": str(store)}, "ARTIFACTSTORE_STORE")):
        done = run_cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["store_from"] == source
    missing = run_cli("ls", env={"ARTIFACTSTORE_STORE": ""})
    assert missing.returncode == 2
    assert missing.stderr == "error: no store given: use --store PATH|URL or set ARTIFACTSTORE_STORE\n"
    assert "[required]" not in run_cli("ls", "--help").stdout


def test_get_and_checkout_honour_the_umask(tmp_path):
    store = tmp_path / "store"
    run_cli("init", store)
    tree = make_tree(tmp_path / "tree", {"adapter_weights/a.bin": random_bytes(1000, 1)})
    object_id = run_cli("put", tree, "--store", store).stdout.strip()
    done = subprocess.run(["sh", "-c", f'umask 022 && "{sys.executable}" -m artifactstore get {object_id} '
                                       f'"{tmp_path / "out"}" --store "{store}"'], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [tmp_path / "out", *(tmp_path / "out").rglob("*")]}
    assert modes == {"out": 0o755, "out/adapter_weights": 0o755, "out/adapter_weights/a.bin": 0o644}


def test_config_set_adds_a_cold_tier_later_and_records_who_and_why(tmp_path):
    store = tmp_path / "store"
    run_cli("init", store)
    no_tier = run_cli("tier", "--store", store)
    assert no_tier.returncode == 1 and "config set cold" in no_tier.stderr
    (tmp_path / "file").write_text("")
    unwritable = run_cli("config", "set", "cold", tmp_path / "file" / "below-a-file", "--store", store)
    assert unwritable.returncode == 1 and unwritable.stderr.count("\n") == 1, unwritable.stderr
    added = run_cli("config", "set", "cold", tmp_path / "archive", "--by", "admin", "--reason", "archive",
                    "--store", store)
    assert added.returncode == 0, added.stderr
    assert run_cli("config", "set", "keep-hot", "5", "--store", store, "--by", "admin").returncode == 0
    shown = json.loads(run_cli("config", "--json", "--store", store).stdout)
    assert shown["cold"] == str(tmp_path / "archive") and shown["keep_hot"] == 5
    assert [(c["setting"], c["actor"], c["to"]) for c in shown["changes"]] == [
        ("cold", "admin", str(tmp_path / "archive")), ("keep_hot", "admin", 5)]
    tree = make_tree(tmp_path / "tree", {"a.bin": random_bytes(300_000, 5)})
    run_cli("put", tree, "--store", store)
    (tmp_path / "archive" / "packs").mkdir(exist_ok=True)
    (tmp_path / "archive" / "packs" / "x.pack").write_bytes(b"a pack the archive holds")
    replaced = run_cli("config", "set", "cold", tmp_path / "elsewhere", "--store", store)
    assert replaced.returncode == 1 and "holds packs" in replaced.stderr
    assert json.loads(run_cli("config", "--json", "--store", store).stdout)["cold"] == str(tmp_path / "archive")
