"""An adapter bundle in the seeds' layout, validated field by field before anything is stored.

```
adapter_weights/adapter_model.safetensors   adapter_weights/adapter_config.json
training_config.yaml  training_data.hash  eval_results.json  inference_config.yaml
changelog.md  metadata.yaml  [eval_samples.jsonl]  [smoke_tests.jsonl]
```

``smoke_tests.jsonl`` is optional: the known inputs (the seeds: 5-10) with their expected outputs or
checks, which a follower runs through the server's own inference at every swap (serving/smoke.py).
"""

import io
import json
import math
import mmap
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, ValidationError, model_validator
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, CollectionStartEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from ..content.store import ContentStore
from ..content.tensorfile import read_header
from ..errors import InvalidInput
from ..ids import digest
from .samples import MAX_SAMPLES_BYTES, SAMPLES_FILE, parse_samples

WEIGHTS = "adapter_weights/adapter_model.safetensors"
METADATA = "metadata.yaml"
ADAPTER_CONFIG = "adapter_weights/adapter_config.json"
DATA_HASH = re.compile(r"(sha256:[0-9a-f]{64}|b3:[0-9a-f]{64})")
SMOKE_TESTS = "smoke_tests.jsonl"
MAX_SMOKE_TESTS = 100  # every follower runs them at every swap (the seeds: 5-10)
COMPUTED_FIELDS = ("adapter_hash", "created_at", "created_by", "pushed_by", "deployed_at", "deployed_by")
# Limits on every file but the weights (docs/format.md, "What a bundle's files may contain").
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000


class Metadata(BaseModel):
    """metadata.yaml: what only the author knows. Computed fields are refused, never trusted."""

    model_config = ConfigDict(extra="forbid")
    base_model: str = Field(min_length=1)
    change_description: str = Field(min_length=1)
    version: str | None = None
    training_data_hash: str | None = None
    # labelled examples the adapter was trained on: what retrain-check measures data growth against
    training_examples: StrictInt | None = Field(default=None, ge=0)


class AdapterConfig(BaseModel):
    """adapter_config.json in PEFT's layout; PEFT's many other fields are kept as they are.

    ``base_model_name_or_path`` is what PEFT saw: ``null`` for a base built from a config, a
    directory for one loaded from disk. metadata.yaml's ``base_model`` names the base model; a
    name here must agree with it (``names_base_model``).
    """

    model_config = ConfigDict(extra="allow")
    peft_type: str = Field(min_length=1)
    base_model_name_or_path: str | None = Field(min_length=1)
    r: StrictInt = Field(gt=0)
    target_modules: list[str] | str


def names_base_model(base_model_name_or_path: str | None) -> bool:
    """Whether PEFT's ``base_model_name_or_path`` is a model name (compared with metadata.yaml's
    ``base_model``), not ``null`` or a directory, which says where a base was loaded from."""
    return base_model_name_or_path is not None and not base_model_name_or_path.startswith(("/", "~", "./", "../"))


class Mapping(RootModel[dict[str, Any]]):
    pass


class SmokeTest(BaseModel):
    """One line of smoke_tests.jsonl: a known input and what the output must be.

    Exactly one of ``expected`` (the output, equal as JSON; numbers within ``tolerance``),
    ``contains`` (text the output must contain: one or a list) and ``matches`` (a regular expression
    the output text must match somewhere).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    name: str | None = Field(default=None, min_length=1, max_length=128)
    input: Any
    expected: Any = None
    tolerance: float | None = Field(default=None, ge=0)
    contains: str | list[str] | None = None
    matches: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _one_check(self):
        given = [name for name in ("expected", "contains", "matches") if name in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(f"give exactly one of expected, contains, matches (not {', '.join(given) or 'none'})")
        if self.tolerance is not None and given != ["expected"]:
            raise ValueError("tolerance goes with expected")
        if self.matches is not None:
            try:
                re.compile(self.matches)
            except re.error as exc:
                raise ValueError(f"matches: not a regular expression ({exc})") from None
        return self

    @property
    def label(self) -> str:
        return self.name or json.dumps(self.input)[:60]




def metric_values(scores: dict[str, Any]) -> dict[str, float | int]:
    """Every metric of eval results by its dotted path (``{"qa": {"f1": 0.9}}`` -> ``{"qa.f1": 0.9}``)."""
    return dict(_metrics(scores, ()))


def _metrics(scores: dict[str, Any], parts: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    for key, value in scores.items():
        if isinstance(value, dict):
            yield from _metrics(value, parts + (key,))
        else:
            yield ".".join(parts + (key,)), value


def _check_metrics(scores: dict[str, Any], problems: list[str]) -> None:
    """eval_results.json holds numbers, or mappings of them nested to any depth (the file is at most
    64 deep); a metric's dotted path must name one metric only."""
    named: Counter[str] = Counter()
    for path, value in _metrics(scores, ()):
        named[path] += 1
        if type(value) not in (int, float):
            kind = "text" if isinstance(value, str) else "null" if value is None else f"a {type(value).__name__}"
            problems.append(f"eval_results.json: {_path((path,))}: {kind}, not a number or a mapping of numbers")
    for path in sorted(p for p, count in named.items() if count > 1):
        problems.append(f"eval_results.json: {_path((path,))}: named twice (a key with a dot, and nested keys)")


@dataclass(frozen=True)
class TensorDigest:
    dtype: str
    shape: tuple[int, ...]
    digest: str
    bytes: int


def training_data_hashes(text: str | None, problems: list[str]) -> list[str]:
    """training_data.hash: one dataset hash a line (a version trained on several datasets lists
    each), ``sha256:<64 hex>`` or ``b3:<64 hex>``, none repeated."""
    if text is None:
        return []
    hashes = [line.strip() for line in text.splitlines() if line.strip()]
    bad = [h for h in hashes if DATA_HASH.fullmatch(h) is None]
    if not hashes or bad:
        problems.append("training_data.hash: expected one hash a line, 'sha256:<64 hex>' or 'b3:<64 hex>'"
                        + (f", not {bad[0][:80]!r}" if bad else ""))
        return []
    if len(set(hashes)) != len(hashes):
        problems.append("training_data.hash: a dataset hash is listed twice")
        return []
    return hashes


@dataclass(frozen=True)
class Bundle:
    path: Path
    metadata: Metadata
    adapter_config: dict[str, Any]
    training_config: dict[str, Any]
    training_data_hashes: list[str]  # one per dataset it was trained on
    eval_scores: dict[str, Any]  # numbers, or mappings of them: ``metric_values`` reads them
    inference_config: dict[str, Any]
    changelog: str
    tensors: dict[str, TensorDigest]
    # the file id (plain BLAKE3) of the exact bytes each file read was validated from, by its path in
    # the bundle: what the push checks the stored files against, since the files may change meanwhile
    file_ids: dict[str, bytes]
    smoke_tests: tuple[SmokeTest, ...] = ()

    @property
    def adapter_settings(self) -> dict[str, Any]:
        """The adapter config without the base model: together with the tensors, "the weights"."""
        return canonical_settings({k: v for k, v in self.adapter_config.items() if k != "base_model_name_or_path"})


# PEFT keeps these as sets and saves them in hash order, which differs between processes
# (PYTHONHASHSEED): the same adapter saved twice lists its target modules in another order.
UNORDERED_SETTINGS = ("target_modules", "exclude_modules")


def canonical_settings(adapter_settings: dict[str, Any]) -> dict[str, Any]:
    """Adapter settings with PEFT's sets sorted, so that equal settings compare equal."""
    return adapter_settings | {key: sorted(value, key=repr) for key, value in adapter_settings.items()
                               if key in UNORDERED_SETTINGS and isinstance(value, list)}


def _read_text(root: Path, name: str, problems: list[str], file_ids: dict[str, bytes] | None = None) -> str | None:
    """A text file's content, its id noted in ``file_ids``; None after noting the problem."""
    path = root / name
    if not path.is_file() or path.is_symlink():
        problems.append(f"{name}: " + ("missing" if not path.exists() and not path.is_symlink() else
                                       "a symlink, not a file" if path.is_symlink() else "not a regular file"))
        return None
    data = _read_bounded(path, name, MAX_FILE_BYTES, problems, file_ids)
    try:
        return None if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{name}: not UTF-8 text")
    return None


def _read_bounded(path: Path, name: str, limit: int, problems: list[str],
                  file_ids: dict[str, bytes] | None) -> bytes | None:
    """A file's bytes, at most ``limit`` of them, their id noted in ``file_ids``; None after noting
    the problem. The size is known before a byte is read: a 50 MB config is refused, not parsed for
    minutes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
    except OSError as exc:
        problems.append(f"{name}: cannot read ({exc.strerror})")
        return None
    size = max(size, len(data))  # a file that grew after the fstat is still read no further
    if size > limit:
        problems.append(f"{name}: {size:,} bytes, more than the limit of {limit:,}")
        return None
    if file_ids is not None:
        file_ids[name] = digest(data)
    return data


_MISSING = object()


class _Refused(Exception):
    """Content outside what docs/format.md allows in a bundle's YAML and JSON files."""


def _brief(text: str) -> str:
    """User text inside a one-line message: quoted, escaped, never longer than a line."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _path(parts) -> str:
    """Where in a document, `a.b[2]`; a key that could break the line or run long is quoted."""
    shown = ""
    for part in parts:
        if isinstance(part, int):
            shown += f"[{part}]"
        else:
            shown += ("." if shown else "") + (part if part.isprintable() and 0 < len(part) <= 40 else _brief(part))
    return shown


_TAG = "tag:yaml.org,2002:"
_STR, _MERGE = _TAG + "str", _TAG + "merge"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_COLLECTION_TAGS = {SequenceNode: _TAG + "seq", MappingNode: _TAG + "map"}


def _short(tag: str) -> str:
    return tag.replace(_TAG, "!!")


class _BundleYaml(Composer, SafeConstructor, Resolver):
    """YAML that holds JSON data only, checked node by node while it is composed.

    The parser it is mixed with delivers events one at a time without recursing, so the depth is
    counted before the (recursive) composer could exhaust the stack, and an alias counts as every
    node it repeats: "billion laughs" stops after MAX_NODES, a recursive alias at once.
    """

    # A timestamp stays the text written, as JSON has no dates; "=" (YAML 1.1's value key) is text too.
    yaml_implicit_resolvers = {first: [(tag, regexp) for tag, regexp in resolvers
                                       if tag not in (_TAG + "timestamp", _TAG + "value")]
                               for first, resolvers in Resolver.yaml_implicit_resolvers.items()}

    def __init__(self):
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._nodes = self._depth = self._peak = 0
        self._open: set[str] = set()  # anchors of collections still being composed
        self._sizes: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, nesting) of what it names

    def _count(self, nodes: int, nesting: int, mark) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _Refused(f"line {mark.line + 1}: more than {MAX_NODES:,} nodes (an alias counts all it repeats)")
        if self._depth + nesting > MAX_DEPTH:
            raise _Refused(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        self._peak = max(self._peak, self._depth + nesting)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            if event.anchor in self._open:
                raise _Refused(f"line {event.start_mark.line + 1}: alias *{event.anchor} is inside what it names")
            node = super().compose_node(parent, index)
            self._count(*self._sizes[event.anchor], event.start_mark)
        else:
            nested, start, outer_peak = isinstance(event, CollectionStartEvent), self._nodes, self._peak
            self._peak = self._depth
            self._count(1, nested, event.start_mark)
            self._depth += nested
            if event.anchor is not None:
                self._open.add(event.anchor)
            node = super().compose_node(parent, index)
            self._depth -= nested
            if event.anchor is not None:
                self._open.discard(event.anchor)
                self._sizes[event.anchor] = (self._nodes - start, self._peak - self._depth)
            self._peak = max(outer_peak, self._peak)
        self._check_tag(node, key=isinstance(parent, MappingNode) and index is None)
        return node

    def _check_tag(self, node, key: bool) -> None:
        line, scalar = node.start_mark.line + 1, isinstance(node, ScalarNode)
        if key:
            if scalar and node.tag in (_STR, _MERGE):
                return
            # JSON keys are text; stringifying would turn `on:` into "true", and `1:` and "1": into one key
            if scalar:
                raise _Refused(f"line {line}: mapping key {_brief(node.value)} reads as {_short(node.tag)}: "
                               f"quote it to make it text")
            raise _Refused(f"line {line}: mapping key is not text")
        if not scalar:
            if node.tag != _COLLECTION_TAGS[type(node)]:
                raise _Refused(f"line {line}: {_short(node.tag)} is not JSON data")
            return
        if node.tag == _STR:
            return
        reading = self.resolve(ScalarNode, node.value, (True, False))
        if node.tag == reading:
            if reading not in _SCALAR_TAGS:  # `<<` outside a key
                raise _Refused(f"line {line}: {_brief(node.value)} reads as {_short(reading)}: "
                               f"quote it to make it text")
            return
        if node.tag in _SCALAR_TAGS:
            # An explicit !!int or !!bool stands only where the text reads so anyway: PyYAML's constructors
            # fail with KeyError or IndexError on `!!bool maybe` or `!!int ''`.
            raise _Refused(f"line {line}: {_short(node.tag)} {_brief(node.value)}: the text does not read as that")
        raise _Refused(f"line {line}: {_short(node.tag)} is not JSON data")

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen = set()
        for key, _ in node.value:  # every key is a text scalar by now
            if key.value in seen:
                raise _Refused(f"line {key.start_mark.line + 1}: duplicate key {_brief(key.value)}")
            seen.add(key.value)
        return node


class _PyYamlLoader(_BundleYaml, Reader, Scanner, Parser):
    def __init__(self, text: str):
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BundleYaml.__init__(self)


_YamlLoader: Any  # the fastest parser this PyYAML has, under the checks above
try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml
    _YamlLoader = _PyYamlLoader
else:
    class _YamlLoader(_BundleYaml, CParser):  # type: ignore[no-redef]
        """libyaml's parser (scanning a 1 MiB file in milliseconds, not seconds) under the checks above."""

        def __init__(self, text: str):
            CParser.__init__(self, text)
            _BundleYaml.__init__(self)


def _parse_yaml(text: str):
    parser = _YamlLoader(text)
    try:
        return parser.get_single_data()
    finally:
        parser.dispose()


_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[][{}]')


def _parse_json(text: str):
    # json.loads recurses once per bracket. Strings are skipped exactly as JSON reads them, so on
    # any prefix json.loads gets through, this count is its depth.
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        if token[0] in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
        elif token[0] in ("]", "}"):
            depth -= 1
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json.loads would keep the last silently
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {_brief(key)}")
            seen.add(key)
    return obj


_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_RANGE = range(-(1 << 63), 1 << 64)  # int64 and uint64: wider ones are mistakes, and past 4300
# digits (a YAML hex literal gets there) Python refuses to print an int at all


def _check_json_data(data) -> None:
    """Refuse what canonical JSON cannot store exactly. Iterative: walks any nesting or sharing safely."""
    nodes = 0
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(data, (), 0)]
    while stack:
        value, parts, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} nodes")
        at = f"{_path(parts)}: " if parts else ""
        if type(value) is dict or type(value) is list:
            if depth == MAX_DEPTH:
                raise _Refused(f"{at}nested deeper than {MAX_DEPTH} levels")
            if type(value) is list:
                stack.extend((item, parts + (i,), depth + 1) for i, item in enumerate(value))
                continue
            assert isinstance(value, dict)
            for key, item in value.items():
                if type(key) is not str:
                    raise _Refused(f"{at}mapping key of type {type(key).__name__}, not text")
                nodes += 1
                stack.append((key, parts, depth + 1))
                stack.append((item, parts + (key,), depth + 1))
        elif type(value) is str:
            if _SURROGATE.search(value):
                # only an escape (\ud800) makes one; UTF-8, and so the stored record, cannot hold it
                raise _Refused(f"{at}text with a lone surrogate")
        elif type(value) is float:
            if not math.isfinite(value):
                raise _Refused(f"{at}{json.dumps(value)} is not a finite number")
        elif type(value) is int:
            if value not in _INT_RANGE:
                raise _Refused(f"{at}integer outside -2**63 .. 2**64-1")
        elif not (value is None or type(value) is bool):
            raise _Refused(f"{at}{type(value).__name__} is not JSON data")


def _load(root: Path, name: str, parse, problems: list[str], file_ids: dict[str, bytes] | None = None):
    """The parsed content of a JSON or YAML file, or _MISSING after noting the problem."""
    text = _read_text(root, name, problems, file_ids)
    if text is None:
        return _MISSING
    return _parse(text, name, parse, problems)


def _parse(text: str, name: str, parse, problems: list[str]):
    try:
        data = parse(text)
        _check_json_data(data)
        return data
    except _Refused as exc:
        problems.append(f"{name}: {exc}")
    except yaml.MarkedYAMLError as exc:  # its first line alone is often only "while parsing a flow sequence"
        where = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        said = ": ".join(part.splitlines()[0] for part in (exc.context, exc.problem) if part)
        problems.append(f"{name}: not valid YAML ({where}{said})")
    except (ValueError, yaml.YAMLError) as exc:
        problems.append(f"{name}: not valid {'JSON' if parse is _parse_json else 'YAML'} "
                        f"({str(exc).splitlines()[0]})")
    return _MISSING


def _validate(name: str, data, model: type[BaseModel], problems: list[str]):
    if data is _MISSING:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            said = "unknown field (refused, not ignored)" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{name}: {_path(error['loc']) or '(top level)'}: {said}")
    return None


def read_data_file(path: Path, model: type[BaseModel]) -> Any:
    """A YAML or JSON file outside a bundle (a release policy, say) read under a bundle file's rules
    and validated by ``model``: InvalidInput names every problem on one line, each after the file's name."""
    problems: list[str] = []
    path = path.resolve()  # a symlink to the file is fine here: nothing is stored from the path
    data = _load(path.parent, path.name, _parse_json if path.name.endswith(".json") else _parse_yaml, problems)
    parsed = _validate(path.name, data, model, problems)
    if problems:
        raise InvalidInput("; ".join(problems))
    return parsed


def _json_lines(text: str, name: str, model: type[BaseModel], problems: list[str]) -> list[Any]:
    """Each non-blank line of JSON Lines text, read under a bundle file's rules and validated by ``model``."""
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            where = f"{name} line {number}"
            item = _validate(where, _parse(line, where, _parse_json, problems), model, problems)
            if item is not None:
                items.append(item)
    return items


def read_json_lines(text: str, name: str, model: type[BaseModel], *, max_bytes: int = MAX_FILE_BYTES) -> list[Any]:
    """JSON Lines from outside a bundle (servers' metrics records, say), each line read under a bundle
    file's rules and validated by ``model``; InvalidInput names every problem (line and field)."""
    problems: list[str] = []
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidInput(f"{name}: {size:,} bytes, more than the limit of {max_bytes:,}")
    items = _json_lines(text, name, model, problems)
    if problems:
        raise InvalidInput("; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else ""))
    return items


def _smoke_tests(text: str, problems: list[str]) -> tuple[SmokeTest, ...]:
    tests = _json_lines(text, SMOKE_TESTS, SmokeTest, problems)
    lines = sum(1 for line in text.splitlines() if line.strip())
    if not 1 <= lines <= MAX_SMOKE_TESTS:
        problems.append(f"{SMOKE_TESTS}: {lines} tests; give 1 to {MAX_SMOKE_TESTS} (the seeds: 5-10)")
    return tuple(tests)


def smoke_tests_of(content: ContentStore, bundle_id: str) -> tuple[SmokeTest, ...]:
    """The smoke tests a stored bundle carries (none: an empty tuple), read by the rules a push checks
    them with; InvalidInput when the stored file breaks them (a bundle pushed before they existed)."""
    tree = content.read_manifest(bundle_id)
    entry = next((e for e in getattr(tree, "entries", ()) if e.path == SMOKE_TESTS), None)
    if entry is None:
        return ()
    problems: list[str] = []
    try:
        tests = _smoke_tests(content.read_file(entry.file).decode("utf-8"), problems)
    except UnicodeDecodeError:
        problems.append(f"{SMOKE_TESTS}: not UTF-8 text")
    if problems:
        raise InvalidInput(f"{bundle_id}: " + "; ".join(problems))
    return tests


def read_metadata(data: bytes, where: str) -> Metadata:
    """A stored bundle's metadata.yaml, read by the rules a push reads it with; ``where`` names the bundle."""
    problems: list[str] = []
    if len(data) > MAX_FILE_BYTES:
        problems.append(f"{METADATA}: {len(data):,} bytes, more than the limit of {MAX_FILE_BYTES:,}")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{METADATA}: not UTF-8 text")
        else:
            metadata = _validate(METADATA, _parse(text, METADATA, _parse_yaml, problems), Metadata, problems)
            if metadata is not None:
                return metadata
    raise InvalidInput(f"{where}: " + "; ".join(problems))


def hash_weights(path: Path) -> tuple[bytes, dict[str, TensorDigest]]:
    """The weights file's id (the BLAKE3 of the whole file) and each tensor's dtype, shape and
    BLAKE3 of its bytes (what decides whether weights changed), all from one mapping of the file,
    its header included: the id then vouches for the very bytes the tensors were read from."""
    with open(path, "rb") as f:
        # an empty file cannot be mapped: its header is refused as the loader refuses it
        empty = os.fstat(f.fileno()).st_size == 0
        with nullcontext(b"") if empty else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, \
                ThreadPoolExecutor(3) as pool:
            data = memoryview(mapped)
            try:
                header = read_header(lambda offset, length: bytes(data[offset:offset + length]), len(data))
                whole = pool.submit(digest, data)  # beside the tensors: the pool's third thread
                digests = pool.map(lambda t: "b3:" + blake3.blake3(data[t.begin:t.end]).hexdigest(),
                                   header.tensors.values())
                tensors = {name: TensorDigest(t.dtype, tuple(t.shape), d, t.end - t.begin)
                           for (name, t), d in zip(header.tensors.items(), digests)}
                return whole.result(), tensors
            finally:
                data.release()


def _check_other_weights(root: Path, tensors: dict[str, TensorDigest], problems: list[str],
                         file_ids: dict[str, bytes]) -> None:
    """Other safetensors files under adapter_weights/, which a load reads beside the adapter's
    (serving/load.py): each must parse, and no tensor name may be in two files, else no server
    could load the version. Their ids are noted in ``file_ids``."""
    owner = dict.fromkeys(tensors, WEIGHTS)
    weights_dir = root / WEIGHTS.rpartition("/")[0]
    # a symlink is refused as any bundle file's is, when the bundle is stored
    others = sorted(p for p in weights_dir.rglob("*.safetensors")
                    if p.is_file() and not p.is_symlink() and p != root / WEIGHTS) if weights_dir.is_dir() else []
    for path in others:
        name = path.relative_to(root).as_posix()
        try:
            file_ids[name], found = hash_weights(path)
        except InvalidInput as exc:
            problems.append(f"{name}: {exc}")
            continue
        repeated = [tensor for tensor in found if tensor in owner]
        if repeated:
            problems.append(f"{name}: {len(repeated)} tensor name(s) another weights file has, such as "
                            f"{repeated[0]!r} ({owner[repeated[0]]}): a load refuses a name in two files")
        for tensor in found:
            owner.setdefault(tensor, name)


def _check_eval_samples(root: Path, problems: list[str], file_ids: dict[str, bytes]) -> None:
    """The optional eval_samples.jsonl (requests of the eval set, the default drift baseline at
    promotion), its id noted in ``file_ids``."""
    path = root / SAMPLES_FILE
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file() or path.is_symlink():
        problems.append(f"{SAMPLES_FILE}: not a regular file")
        return
    data = _read_bounded(path, SAMPLES_FILE, MAX_SAMPLES_BYTES, problems, file_ids)
    if data is None:
        return
    try:
        # read as a file opened in text mode reads (universal newlines), from the bytes just hashed
        parse_samples(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"), SAMPLES_FILE).check_reference()
    except UnicodeDecodeError:
        problems.append(f"{SAMPLES_FILE}: not UTF-8 text")
    except InvalidInput as exc:
        problems.append(str(exc))


def recorded_tensors(tensors: dict[str, Any]) -> dict[str, TensorDigest]:
    """The tensors a version record lists (its ``tensors``), as a bundle holds them."""
    return {name: TensorDigest(t["dtype"], tuple(t["shape"]), t["digest"], t["bytes"]) for name, t in tensors.items()}


def load_bundle(root: Path, known_tensors: Callable[[Path], tuple[bytes, dict[str, TensorDigest]] | None] | None = None
                ) -> Bundle:
    """Read and validate every file of the bundle; InvalidInput names every problem at once.

    ``known_tensors(weights file)``: the file's id and its tensors where the store already holds
    the file whole (a version's weights, pushed again with another config): they are not hashed again."""
    if not root.is_dir():
        raise InvalidInput(f"bundle {root} is not a directory")
    problems: list[str] = []
    file_ids: dict[str, bytes] = {}
    raw_metadata = _load(root, "metadata.yaml", _parse_yaml, problems, file_ids)
    if isinstance(raw_metadata, dict):
        for field in COMPUTED_FIELDS:
            if field in raw_metadata:  # `adapter_hash:` (null) too: the file claims to set it all the same
                del raw_metadata[field]
                problems.append(f"metadata.yaml: {field}: computed by the store, remove it from the file")
    metadata = _validate("metadata.yaml", raw_metadata, Metadata, problems)
    adapter_config = _validate(ADAPTER_CONFIG, _load(root, ADAPTER_CONFIG, _parse_json, problems, file_ids),
                               AdapterConfig, problems)
    training_config = _validate("training_config.yaml", _load(root, "training_config.yaml", _parse_yaml,
                                                              problems, file_ids), Mapping, problems)
    inference_config = _validate("inference_config.yaml", _load(root, "inference_config.yaml", _parse_yaml,
                                                               problems, file_ids), Mapping, problems)
    eval_scores = _validate("eval_results.json", _load(root, "eval_results.json", _parse_json, problems, file_ids),
                            Mapping, problems)
    if eval_scores is not None:
        _check_metrics(eval_scores.root, problems)
    changelog = _read_text(root, "changelog.md", problems, file_ids)
    if changelog is not None and not changelog.strip():
        problems.append("changelog.md: empty")
    data_hashes = training_data_hashes(_read_text(root, "training_data.hash", problems, file_ids), problems)
    if data_hashes and metadata is not None and metadata.training_data_hash not in (None, *data_hashes):
        problems.append("metadata.yaml: training_data_hash is not one of training_data.hash's")
    if metadata is not None and adapter_config is not None \
            and names_base_model(adapter_config.base_model_name_or_path) \
            and metadata.base_model != adapter_config.base_model_name_or_path:
        problems.append(f"metadata.yaml: base_model {metadata.base_model!r} differs from "
                        f"adapter_config.json's base_model_name_or_path {adapter_config.base_model_name_or_path!r}")
    _check_eval_samples(root, problems, file_ids)
    smoke_tests: tuple[SmokeTest, ...] = ()
    if os.path.lexists(root / SMOKE_TESTS):
        smoke_text = _read_text(root, SMOKE_TESTS, problems, file_ids)
        if smoke_text is not None:
            smoke_tests = _smoke_tests(smoke_text, problems)
    tensors = None
    if not (root / WEIGHTS).is_file() or (root / WEIGHTS).is_symlink():
        problems.append(f"{WEIGHTS}: missing")
    else:
        try:
            file_ids[WEIGHTS], tensors = (known_tensors and known_tensors(root / WEIGHTS)) or hash_weights(root / WEIGHTS)
        except InvalidInput as exc:
            problems.append(f"{WEIGHTS}: {exc}")
    _check_other_weights(root, tensors or {}, problems, file_ids)
    if problems:
        raise InvalidInput(f"bundle {root} is invalid: " + "; ".join(problems))
    # with no problem noted, every part was read
    assert metadata and adapter_config and training_config and inference_config and eval_scores
    assert changelog is not None and data_hashes and tensors is not None
    return Bundle(root, metadata, adapter_config.model_dump(), training_config.root, data_hashes,
                  eval_scores.root, inference_config.root, changelog, tensors, file_ids, smoke_tests)

