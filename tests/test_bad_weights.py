"""Every malformed safetensors file the format rejects, through the API and the CLI."""

import re
import sys

import pytest
from conftest import snapshot
from test_tensorfile import INVALID

from artifactstore import InvalidInput
from artifactstore.cli import main
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.registry.bundle import WEIGHTS

FIRST = adapter_history(layers=1, scale=16)[0]


@pytest.mark.parametrize("case", sorted(INVALID))
def test_refused_by_load_and_by_push_without_changing_the_store(store, tmp_path, case, monkeypatch, capsys):
    data, message = INVALID[case]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    file_id = store.put(bad).id
    before = snapshot(store.path)
    with pytest.raises(InvalidInput, match=re.escape(message)):
        store.load(file_id)

    bundle = write_bundle(FIRST, tmp_path / "bundle")
    (bundle / WEIGHTS).write_bytes(data)
    monkeypatch.setattr(sys, "argv", ["artifactstore", "push", str(bundle), "acme/support@v1.0.0",
                                      "--store", str(store.path)])
    with pytest.raises(SystemExit) as exited:
        main()
    errors = capsys.readouterr().err.splitlines()
    assert exited.value.code == 1 and len(errors) == 1 and message in errors[0], errors
    assert snapshot(store.path) == before
