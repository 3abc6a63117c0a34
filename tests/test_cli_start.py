"""The commands that read the registry load none of the heavy libraries (a structural check of CLI
start time; the time itself is measured by benchmarks/history.py, not asserted)."""

import json
import subprocess
import sys

HEAVY = ("numpy", "pydantic", "yaml", "zarr", "tqdm", "safetensors", "ml_dtypes")

PROBE = """
import json, sys
from artifactstore.cli import cli
for args in json.loads(sys.argv[1]):
    try:
        cli.main(args, standalone_mode=False)
    except Exception as exc:  # a refused command has loaded what it needed all the same
        print(type(exc).__name__, exc, file=sys.stderr)
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
""".format(heavy=HEAVY)


def loaded_by(*commands: list[str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_reading_the_registry_loads_no_heavy_library(store, tmp_path):
    from artifactstore.demo import adapter_history, write_bundle

    version = adapter_history(layers=2, scale=16)[0]
    store.push(write_bundle(version, tmp_path / "bundle"), "acme/support@v1.0.0")
    location = str(store.path)
    assert loaded_by(["ls", "--store", location], ["log", "acme/support", "--store", location],
                     ["ls", "acme/support", "--json", "--store", location]) == []


def test_a_command_that_needs_them_still_loads_them(store):
    assert "numpy" in loaded_by(["drift", "acme/none", "--store", str(store.path)])


def test_a_promote_and_a_rollback_load_no_heavy_library(store, tmp_path):
    """Without a policy nothing heavy; with one, pydantic for the policy (its gate and review are
    checked), and still no numpy, zarr or YAML. A bundle without eval_samples.jsonl needs no drift
    baseline at promotion."""
    from artifactstore.demo import adapter_history, write_bundle

    for version, number in zip(adapter_history(layers=2, scale=16)[:2], ("v1.0.0", "v1.1.0")):
        store.push(write_bundle(version, tmp_path / number), f"acme/support@{number}")
    location = str(store.path)
    moves = (["promote", "acme/support@v1.0.0", "--store", location],
             ["promote", "acme/support@v1.1.0", "--store", location],
             ["rollback", "acme/support", "--store", location])
    assert loaded_by(*moves) == []
    assert store.state("acme/support").pointer("production") == "v1.0.0", "the moves were made"
    policy = tmp_path / "policy.yaml"
    policy.write_text("review:\n  required: true\n  min_samples: 1\n")
    store.set_policy("acme/support", policy)
    forced = [[*move, "--force", "--reason", "test"] if move[0] == "promote" else move for move in moves]
    assert loaded_by(*forced[1:]) == ["pydantic"]
    assert store.state("acme/support").pointer("production") == "v1.0.0"
