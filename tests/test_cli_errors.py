"""What the command line does with bad values and damaged models: usage errors in one line with exit
status 2, a finite number wherever a float is taken, one model's damage kept to that model, and JSON
that a standard reader accepts (docs/cli.md)."""

import json
import sys

import pytest
import yaml
from conftest import run_cli

from artifactstore.cli import main
from artifactstore.cli.base import emit_json
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.registry.refs import ModelName
from artifactstore.registry.state import ref_key


def invoke(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the command in this process: the same error reporting as the
    installed command, without a process start per case."""
    monkeypatch.setattr(sys, "argv", ["artifactstore", *map(str, args)])
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def one_usage_error(status: int, err: str, *words: str) -> None:
    lines = err.splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(word in lines[0] for word in words), err


def test_json_output_turns_non_finite_numbers_into_null(capsys):
    emit_json({"psi": [[float("nan"), 0.5]], "limit": float("inf"), "pair": (float("-inf"), 1)})
    printed = capsys.readouterr().out
    assert json.loads(printed, parse_constant=pytest.fail) == {"psi": [[None, 0.5]], "limit": None,
                                                               "pair": [None, 1]}


@pytest.mark.parametrize("args", [
    ("rollout", "watch", "--interval", "inf"),
    ("rollout", "watch", "--interval", "nan"),
    ("rollout", "watch", "--interval", "1e12"),  # finite, but past what a sleep takes
    ("follow", "acme/support@production", "--poll-ms", "inf"),
    ("follow", "acme/support@production", "--heartbeat-s", "nan"),
    ("serve", "--poll", "inf"),
    ("drill", "acme/support", "--max-seconds", "nan"),
    ("drill", "acme/support", "--max-seconds", "inf"),
    ("drill", "acme/support", "--max-seconds", "3601"),
    ("verify", "--sample", "nan"),
])
def test_float_options_take_finite_numbers_in_range_only(tmp_path, store, capsys, monkeypatch, args):
    status, out, err = invoke(capsys, monkeypatch, *args, "--store", tmp_path / "store")
    one_usage_error(status, err, args[-2])
    assert out == ""


def test_out_of_range_integers_are_usage_errors_and_change_nothing(tmp_path, served, capsys, monkeypatch):
    before = served.state("acme/support").id
    for args, option in ((("canary", "acme/support@v1.1.0", "--percent", "101"), "--percent"),
                         (("review", "acme/support@v1.1.0", "--approve", "--by", "a", "--samples", "-5"), "--samples")):
        status, _, err = invoke(capsys, monkeypatch, *args, "--store", tmp_path / "store")
        one_usage_error(status, err, option)
    assert served.state("acme/support").id == before


@pytest.mark.parametrize("value", ["-1", "²", "1.5"])
def test_config_set_keep_hot_refuses_what_is_no_whole_number(tmp_path, store, capsys, monkeypatch, value):
    status, _, err = invoke(capsys, monkeypatch, "config", "set", "keep-hot", value, "--store", tmp_path / "store")
    one_usage_error(status, err, "keep-hot takes a whole number", repr(value))
    assert "Traceback" not in err
    assert json.loads(run_cli("config", "--json", "--store", tmp_path / "store").stdout)["changes"] == []


def test_a_usage_error_click_says_in_several_lines_is_one(tmp_path, store, capsys, monkeypatch):
    status, _, err = invoke(capsys, monkeypatch, "config", "set", "--store", tmp_path / "store")
    one_usage_error(status, err, "Missing argument", "cold, keep-hot")


@pytest.fixture
def one_damaged(served, tmp_path):
    """``served`` with a rollout of acme/support@v1.1.0 running and a second model, acme/other, whose
    ref is damaged."""
    served.push(write_bundle(adapter_history(layers=2, scale=16)[0], tmp_path / "other"), "acme/other@v1.0.0")
    served.start_rollout("acme/support@v1.1.0")
    served.backend.write(ref_key(ModelName.parse("acme/other")), b"garbage")
    return served


def test_rollout_watch_ticks_the_other_models_past_a_damaged_ref(tmp_path, one_damaged, capsys, monkeypatch):
    status, out, err = invoke(capsys, monkeypatch, "rollout", "watch", "--count", "1", "--interval", "0.01", "--json",
                              "--store", tmp_path / "store")
    assert status == 0, err
    assert [json.loads(line)["model"] for line in out.splitlines()] == ["acme/support"]
    assert err.startswith("error: acme/other: ") and "malformed ref" in err and err.count("\n") == 1


def test_ls_and_registry_export_show_a_damaged_model_beside_the_others(tmp_path, one_damaged, capsys, monkeypatch):
    status, out, err = invoke(capsys, monkeypatch, "ls", "--json", "--store", tmp_path / "store")
    assert status == 0, err
    listing = {m["model"]: m for m in json.loads(out)["models"]}
    assert "malformed ref" in listing["acme/other"]["damaged"] and set(listing["acme/other"]) == {"model", "damaged"}
    assert listing["acme/support"]["production"] == "v1.0.0"
    status, out, _ = invoke(capsys, monkeypatch, "ls", "--store", tmp_path / "store")
    assert status == 0 and "  damaged: " in out and "v1.0.0       production" in out
    status, out, err = invoke(capsys, monkeypatch, "registry", "export", "--store", tmp_path / "store")
    assert status == 0, err
    models = yaml.safe_load(out)["clients"]["acme"]["models"]
    assert "malformed ref" in models["other"]["damaged"] and models["support"]["production"] == "v1.0.0"
    status, _, err = invoke(capsys, monkeypatch, "ls", "acme/other", "--store", tmp_path / "store")
    assert status == 1 and "malformed ref" in err  # asked for by name, it is the error


def test_lineage_json_without_a_match_prints_an_empty_answer_and_exits_1(tmp_path, served, capsys, monkeypatch):
    status, out, err = invoke(capsys, monkeypatch, "lineage", "--base-model", "nope", "--json",
                              "--store", tmp_path / "store")
    assert status == 1 and json.loads(out) == {"versions": []}
    assert err == "error: no version matches --base-model nope\n"
    status, out, err = invoke(capsys, monkeypatch, "lineage", "--shares-tensors-with", "acme/support@v9.0.0",
                              "--json", "--store", tmp_path / "store")
    assert status == 1 and out == "" and err.startswith("error: ")  # a ref that names nothing is an error


def test_route_json_says_which_key_it_drew(tmp_path, served, capsys, monkeypatch):
    served.set_canary("acme/support@v1.1.0", 50)
    for _ in range(4):
        status, out, _ = invoke(capsys, monkeypatch, "route", "acme/support@production", "--json",
                                "--store", tmp_path / "store")
        drawn = json.loads(out)
        assert status == 0 and isinstance(drawn["key"], str) and drawn["key"]
        status, out, _ = invoke(capsys, monkeypatch, "route", "acme/support@production", "--key", drawn["key"],
                                "--json", "--store", tmp_path / "store")
        assert json.loads(out) == drawn


@pytest.mark.parametrize("args", [("gc", "--dry-run", "--keep-telemetry", "99999999999999999999d"),
                                  ("gc", "--grace", "36501d")])
def test_a_duration_beyond_a_century_is_one_line(store, args):
    """Taken from now it would leave the calendar (an OverflowError's traceback)."""
    result = run_cli(*args, "--store", store.path)
    assert result.returncode == 1 and result.stderr.startswith("error: duration ") and \
        result.stderr.endswith(" is longer than 36500d\n")
