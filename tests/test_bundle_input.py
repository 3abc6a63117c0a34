"""What a bundle's YAML and JSON files may hold (docs/format.md, "What a bundle's files may contain").

Every refusal is one InvalidInput line naming the file, raised before the first byte is written.
"""

import json
import math
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifactstore import InvalidInput, Store
from artifactstore.content.manifest import canonical_json
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.registry import bundle as bundle_module
from artifactstore.registry.bundle import ADAPTER_CONFIG, load_bundle, metric_values

FIRST = adapter_history(layers=2, scale=16)[0]
REF = "acme/support@v1.0.0"


def laughs(levels: int = 9) -> str:
    """Each anchor repeats the previous one nine times: 9**9 strings once expanded."""
    lines = ['l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# The table of issue #8, item 2: (file, content, what the one-line message must say besides the file)
REFUSED = {
    "binary": ("training_config.yaml", "b: !!binary aGVsbG8=\n", "!!binary"),
    "set": ("training_config.yaml", "s: !!set {a, b}\n", "!!set"),
    "recursive-alias": ("inference_config.yaml", "a: &a [*a]\n", "alias *a"),
    "billion-laughs": ("training_config.yaml", laughs(), "more than 100,000 nodes"),
    "deep-json": ("eval_results.json", '{"accuracy": ' + "[" * 100_000 + "]" * 100_000 + "}", "deeper than 64"),
    # libyaml stops at 1000 levels while scanning, before the loader sees level 65
    "deep-yaml": ("inference_config.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
                  ("deeper than 64", "line 1: while increasing flow level: exceeded maximum nesting depth")),
    "50MB-scalar": ("training_config.yaml", "a: " + "x" * 50_000_000 + "\n", "more than the limit"),
    "nan": ("eval_results.json", '{"accuracy": NaN}', "accuracy: NaN is not a finite number"),
    "infinity": ("eval_results.json", '{"accuracy": -Infinity}', "accuracy: -Infinity is not a finite number"),
    "1e999": ("eval_results.json", '{"accuracy": 1e999}', "accuracy: Infinity is not a finite number"),
}


@pytest.fixture
def bundle(tmp_path) -> Path:
    return write_bundle(FIRST, tmp_path / "bundle")


def refused_push(store: Store, bundle: Path, name: str) -> str:
    """Push a bundle that must be refused; the one-line message, after checking that nothing changed."""
    before = snapshot(store.path)
    started = time.monotonic()
    with pytest.raises(InvalidInput) as error:
        store.push(bundle, REF)
    assert time.monotonic() - started < 10  # the unchecked loader ran for minutes on some of these
    message = str(error.value)
    assert len(message.splitlines()) == 1 and f"{name}: " in message
    assert snapshot(store.path) == before
    return message


def refused_cli_push(store: Store, bundle: Path, name: str) -> str:
    before = snapshot(store.path)
    result = run_cli("push", bundle, REF, "--store", store.path, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"{name}: " in lines[0] and "Traceback" not in result.stderr
    assert snapshot(store.path) == before
    return lines[0]


def says_one_of(says: str | tuple[str, ...], message: str) -> bool:
    return any(s in message for s in ((says,) if isinstance(says, str) else says))


@pytest.mark.parametrize("case", REFUSED)
def test_the_issues_inputs_are_refused_before_any_write(store, bundle, case):
    name, content, says = REFUSED[case]
    (bundle / name).write_text(content)
    assert says_one_of(says, refused_push(store, bundle, name))


@pytest.mark.parametrize("case", REFUSED)
def test_the_cli_refuses_them_in_one_line(store, bundle, case):
    name, content, says = REFUSED[case]
    (bundle / name).write_text(content)
    assert says_one_of(says, refused_cli_push(store, bundle, name))


@pytest.mark.parametrize("line", ["adapter_hash:", "created_at: null", "created_by: ~", "deployed_at: ''"])
def test_a_computed_field_is_refused_whatever_its_value(store, bundle, line):
    with (bundle / "metadata.yaml").open("a") as metadata:
        metadata.write(f"\n{line}\n")
    field = line.partition(":")[0]
    assert f"metadata.yaml: {field}: computed by the store" in refused_push(store, bundle, "metadata.yaml")


def test_yaml_timestamps_are_kept_as_the_text_written(store, bundle):
    (bundle / "training_config.yaml").write_text("when: 2024-01-01 10:00:00\nday: 2024-01-01\nlr: 2.0e-4\n")
    store.push(bundle, REF)
    assert store.show(REF)["training_config"] == {"when": "2024-01-01 10:00:00", "day": "2024-01-01", "lr": 2e-4}
    shown = run_cli("show", REF, "--json", "--store", store.path)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout, parse_constant=lambda c: pytest.fail(f"show --json printed {c}"))
    assert record["training_config"]["when"] == "2024-01-01 10:00:00"


@pytest.mark.parametrize("name, content, says", [
    ("training_config.yaml", "at: !!timestamp 2024-01-01\n", "!!timestamp"),
    ("training_config.yaml", "o: !!omap [a: 1]\n", "!!omap"),
    ("training_config.yaml", "p: !!pairs [a: 1]\n", "!!pairs"),
    ("training_config.yaml", "f: !!python/name:os.system\n", "!!python/name:os.system"),
    ("training_config.yaml", "x: !custom 1\n", "!custom"),
    ("training_config.yaml", "n: !!float 1\n", "!!float"),
    ("training_config.yaml", "b: !!bool maybe\n", "!!bool"),
    ("training_config.yaml", "i: !!int ''\n", "!!int"),
    ("training_config.yaml", "x: <<\n", "!!merge"),
    ("inference_config.yaml", "1: a\n", "mapping key '1' reads as !!int: quote it"),
    ("inference_config.yaml", "on: push\n", "mapping key 'on' reads as !!bool: quote it"),
    ("inference_config.yaml", "~: 1\n", "mapping key '~' reads as !!null"),
    ("inference_config.yaml", "? [a]\n: 1\n", "mapping key is not text"),
    ("inference_config.yaml", "top_p: 0.9\ntop_p: 0.8\n", "line 2: duplicate key 'top_p'"),
    ("inference_config.yaml", "t: .nan\n", "t: NaN is not a finite number"),
    ("inference_config.yaml", "t: [1, -.inf]\n", "t[1]: -Infinity is not a finite number"),
    ("inference_config.yaml", 'a: "\\ud800"\n',  # libyaml refuses the escape itself; PyYAML's own parser does not
     ("a: text with a lone surrogate", "line 1: while parsing a quoted scalar: found invalid Unicode character")),
    ("metadata.yaml", "base_model: x\nbase_model: y\n", "duplicate key 'base_model'"),
    ("eval_results.json", '{"accuracy": 0.9, "accuracy": 0.8}', "duplicate key 'accuracy'"),
    ("eval_results.json", '{"a\\nb": NaN}', "'a\\nb': NaN is not a finite number"),
    (ADAPTER_CONFIG, '{"peft_type": "\\udfff"}', "peft_type: text with a lone surrogate"),
    ("eval_results.json", "[" * 65 + "]" * 65, "deeper than 64"),
    ("inference_config.yaml", "a: " + "[" * 500 + "]" * 500, "line 1: nested deeper than 64 levels"),
    ("inference_config.yaml", "- " * 65 + "x\n", "line 1: nested deeper than 64 levels"),
    ("inference_config.yaml", "a: &a [1]\n" + "".join(f"{c}: &{c} [*{p}]\n" for p, c in zip("abc", "bcd"))
     + "e: " + "[" * 61 + "*d" + "]" * 61, "line 5: nested deeper than 64 levels"),
    ("inference_config.yaml", "a: 0x" + "f" * 20, "a: integer outside -2**63 .. 2**64-1"),
    ("inference_config.yaml", "a: [1\n", "not valid YAML (line 2: while parsing a flow sequence: did not find"),
    ("training_config.yaml", "a:\n" + "".join(f"  k{i}: {i}\n" for i in range(50_001)), "more than 100,000"),
    ("eval_results.json", "[" + ",".join(["0"] * 100_000) + "]", "more than 100,000"),
])
def test_data_json_cannot_hold_exactly_is_refused(store, bundle, name, content, says):
    (bundle / name).write_text(content)
    assert says_one_of(says, refused_push(store, bundle, name))


def test_yaml_anchors_aliases_and_merge_keys_are_plain_data(store, bundle):
    (bundle / "training_config.yaml").write_text(
        "defaults: &d {lr: 1.0e-4, epochs: 3}\nrun:\n  <<: *d\n  epochs: 5\nagain: *d\n'1': quoted\n")
    nested = "[" * 63 + "]" * 63  # 64 levels with the mapping around it: the most allowed
    (bundle / "inference_config.yaml").write_text(f"n: {nested}\n=: ok\n")
    store.push(bundle, REF)
    record = store.show(REF)
    assert record["training_config"] == {"defaults": {"lr": 1e-4, "epochs": 3}, "run": {"lr": 1e-4, "epochs": 5},
                                         "again": {"lr": 1e-4, "epochs": 3}, "1": "quoted"}
    assert record["inference_config"]["="] == "ok" and json.dumps(record["inference_config"]["n"]) == nested


@pytest.mark.parametrize("name", ["changelog.md", "training_data.hash", "metadata.yaml", ADAPTER_CONFIG])
def test_every_small_file_has_a_size_limit(store, bundle, name):
    (bundle / name).write_bytes(b"#" * ((1 << 20) + 1))
    assert "1,048,577 bytes, more than the limit of 1,048,576" in refused_push(store, bundle, name)


def test_a_file_of_exactly_the_limit_is_read(store, bundle):
    text = (bundle / "changelog.md").read_text()
    (bundle / "changelog.md").write_text(text + "x" * ((1 << 20) - len(text.encode())))
    store.push(bundle, REF)


def test_all_problems_are_still_named_at_once(store, bundle):
    (bundle / "training_config.yaml").write_text("b: !!binary aGVsbG8=\n")
    (bundle / "eval_results.json").write_text('{"accuracy": NaN}')
    (bundle / "changelog.md").write_bytes(b"x" * (2 << 20))
    message = refused_push(store, bundle, "training_config.yaml")
    assert "eval_results.json: accuracy: NaN" in message and "changelog.md: 2,097,152 bytes" in message


# -- generated documents ------------------------------------------------------------------------

TARGETS = ["training_config.yaml", "inference_config.yaml", "metadata.yaml", "eval_results.json", ADAPTER_CONFIG]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["2024-01-01 10:00:00", "yes", "on", "~", "<<", "=", ".nan", "0x1F", "1:30", "1e999"]))
KEYS = st.text(max_size=8)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEYS | SCALARS, inner, max_size=4), max_leaves=12)
YAML_PIECES = ["a", "b: ", "- ", "\n", "  ", "&a ", "*a", "&b ", "*b", "<<: ", "? ", "[", "]", "{", "}", ", ",
               "!!binary ", "!!set ", "!!omap ", "!!str ", "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!x ",
               "2024-01-01 10:00:00", ".nan", "-.inf", "1e999", "1.0e+999", "0x1F", "1:30", "~", "on", "=", "'",
               '"', '"\\ud800"', "\\", "#", "---\n", "...\n", "%YAML 1.1\n", "|\n", ">-\n", "\t", "\x00", "é"]
JSON_PIECES = ["{", "}", "[", "]", ",", ":", '"a"', '"b"', '"\\ud800"', '"\\"', "0", "-1", "1.5", "1e999",
               "-1e999", "NaN", "Infinity", "-Infinity", "true", "null", " ", "\n", '"', "\\"]


def dump(name: str, value) -> str:
    return json.dumps(value) if name.endswith(".json") else yaml.safe_dump(value, sort_keys=False)


def documents(name: str):
    """A file's new content; a dict is merged into the file's own data, which then often stays valid."""
    entries = st.integers() | st.floats() if name == "eval_results.json" else VALUES
    merged = st.dictionaries(KEYS, entries, min_size=1, max_size=5)
    return st.one_of(
        merged, merged, merged,
        VALUES.map(lambda value: dump(name, value)),
        st.dictionaries(KEYS | SCALARS, VALUES, max_size=5).map(lambda value: dump(name, value)),
        st.lists(st.sampled_from(JSON_PIECES if name.endswith(".json") else YAML_PIECES), max_size=40).map("".join),
        st.text(max_size=200),
        st.binary(max_size=200),
    )


@st.composite
def edits(draw):
    name = draw(st.sampled_from(TARGETS))
    return name, draw(documents(name))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return write_bundle(FIRST, tmp_path_factory.mktemp("template") / "bundle")


def write(path: Path, content: str | bytes) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))


def bundle_with(template: Path, directory: Path, name: str, content: str | bytes | dict) -> Path:
    bundle = directory / "bundle"
    shutil.copytree(template, bundle)
    if isinstance(content, dict):
        text = (bundle / name).read_text()
        content = dump(name, (json.loads(text) if name.endswith(".json") else yaml.safe_load(text)) | content)
    write(bundle / name, content)
    return bundle


@settings(max_examples=300, deadline=None, database=None)
@given(edits())
def test_load_bundle_gives_a_bundle_or_one_invalid_input_line(template, edit):
    name, content = edit
    with tempfile.TemporaryDirectory() as directory:
        bundle = bundle_with(template, Path(directory), name, content)
        try:
            loaded = load_bundle(bundle)
        except InvalidInput as error:
            assert len(str(error).splitlines()) == 1 and f"{name}: " in str(error)
            return
    # whatever is accepted is what the version record can hold: canonical JSON without NaN
    for data in (loaded.adapter_config, loaded.training_config, loaded.eval_scores, loaded.inference_config,
                 loaded.metadata.model_dump()):
        json.loads(canonical_json(data), parse_constant=lambda c: pytest.fail(f"{c} accepted"))
    assert all(math.isfinite(v) for v in metric_values(loaded.eval_scores).values())


JSON_DATA = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
                         | st.floats(allow_nan=False, allow_infinity=False),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                         max_leaves=12)


# entries merged into a file whose data is a mapping of anything (PEFT's extra fields: any but `r`)
CLEAN_EDITS = st.tuples(st.sampled_from(["training_config.yaml", "inference_config.yaml", ADAPTER_CONFIG]),
                        st.dictionaries(KEYS.filter(lambda key: key != "r"), JSON_DATA, max_size=5))


@settings(max_examples=150, deadline=None, database=None)
@given(CLEAN_EDITS)
def test_json_data_is_accepted_exactly_as_written(template, edit):
    name, data = edit
    text = (template / name).read_text()
    expected = (json.loads(text) if name.endswith(".json") else yaml.safe_load(text)) | data
    with tempfile.TemporaryDirectory() as directory:
        loaded = load_bundle(bundle_with(template, Path(directory), name, data))
    got = {"training_config.yaml": loaded.training_config, "inference_config.yaml": loaded.inference_config,
           ADAPTER_CONFIG: loaded.adapter_config}[name]
    assert canonical_json(got) == canonical_json(expected)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits() | CLEAN_EDITS)
def test_push_stores_a_version_or_changes_nothing(template, edit):
    name, content = edit
    with tempfile.TemporaryDirectory() as directory:
        bundle = bundle_with(template, Path(directory), name, content)
        store = Store.init(Path(directory) / "store")
        before = snapshot(store.path)
        try:
            store.push(bundle, REF)
        except InvalidInput as error:
            assert len(str(error).splitlines()) == 1
            assert snapshot(store.path) == before
            return
        json.dumps(store.show(REF), allow_nan=False)
        assert store.verify().ok


@pytest.mark.parametrize("content, says", [
    (REFUSED["binary"][1], "!!binary"), (REFUSED["set"][1], "!!set"), (REFUSED["recursive-alias"][1], "alias *a"),
    (laughs(), "more than 100,000 nodes"), (REFUSED["deep-yaml"][1], "line 1: nested deeper than 64 levels"),
    ('a: "\\ud800"\n', "a: text with a lone surrogate"), ("a: 2024-01-01 10:00:00\nb: [1, 2]\n", None),
])
def test_pythons_own_yaml_parser_gets_the_same_checks(bundle, monkeypatch, content, says):
    """Where PyYAML was built without libyaml, its Python parser feeds the same checks."""
    monkeypatch.setattr(bundle_module, "_YamlLoader", bundle_module._PyYamlLoader)
    (bundle / "inference_config.yaml").write_text(content)
    started = time.monotonic()
    if says is None:
        assert load_bundle(bundle).inference_config == {"a": "2024-01-01 10:00:00", "b": [1, 2]}
        return
    with pytest.raises(InvalidInput, match="inference_config.yaml: ") as error:
        load_bundle(bundle)
    assert says in str(error.value) and len(str(error.value).splitlines()) == 1
    assert time.monotonic() - started < 10


def test_push_encodes_the_bundles_data_before_its_first_write(store, bundle, monkeypatch):
    """Should load_bundle ever admit what canonical JSON cannot hold, the push still writes nothing."""
    loaded = replace(load_bundle(bundle), training_config={"when": datetime(2024, 1, 1, 10)})
    monkeypatch.setattr(bundle_module, "load_bundle", lambda root, known_tensors=None: loaded)  # push imports it when it runs
    before = snapshot(store.path)
    with pytest.raises(TypeError, match="datetime is not JSON serializable"):
        store.push(bundle, REF)
    assert snapshot(store.path) == before


def test_other_weights_files_are_checked_as_a_load_reads_them(store, tmp_path):
    """A load reads every adapter_weights/*.safetensors: one that does not parse, or that repeats a
    tensor name, would make the version unloadable on every server; a push refuses it. One that
    adds other tensors is loaded beside the adapter's."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    version = adapter_history(layers=1, scale=16)[0]
    source = write_bundle(version, tmp_path / "b")
    weights = source / "adapter_weights"
    first = next(iter(load_file(weights / "adapter_model.safetensors")))
    for name, content in (("repeats.safetensors", {first: np.zeros(4, dtype=np.float32)}),
                          ("sub/garbage.safetensors", None)):
        bad = tmp_path / "bad" / name.replace("/", "-")
        shutil.copytree(source, bad)
        (bad / "adapter_weights" / name).parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            (bad / "adapter_weights" / name).write_bytes(b"not a safetensors file")
        else:
            save_file(content, bad / "adapter_weights" / name)
        before = snapshot(store.path)
        with pytest.raises(InvalidInput, match=f"adapter_weights/{name}: "):
            store.push(bad, "acme/support@v1.0.0")
        assert snapshot(store.path) == before
    save_file({"extra.scale": np.ones(3, dtype=np.float32)}, weights / "extra.safetensors")
    store.push(source, "acme/support@v1.0.0")
    loaded = store.load(store.resolve("acme/support@v1.0.0"))
    assert "extra.scale" in loaded and first in loaded
