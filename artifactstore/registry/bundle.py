"""An adapter bundle in the seeds' layout, validated field by field before anything is stored.

```
adapter_weights/adapter_model.safetensors   adapter_weights/adapter_config.json
training_config.yaml  training_data.hash  eval_results.json  inference_config.yaml
changelog.md  metadata.yaml
```
"""

import json
import mmap
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictFloat, StrictInt, ValidationError

from ..content.tensorfile import read_header_from_path
from ..errors import InvalidInput

WEIGHTS = "adapter_weights/adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_weights/adapter_config.json"
DATA_HASH = re.compile(r"(sha256:[0-9a-f]{64}|b3:[0-9a-f]{64})")
COMPUTED_FIELDS = ("adapter_hash", "created_at", "created_by", "pushed_by", "deployed_at", "deployed_by")


class Metadata(BaseModel):
    """metadata.yaml: what only the author knows. Computed fields are refused, never trusted."""

    model_config = ConfigDict(extra="forbid")
    base_model: str = Field(min_length=1)
    change_description: str = Field(min_length=1)
    version: str | None = None
    training_data_hash: str | None = None


class AdapterConfig(BaseModel):
    """adapter_config.json in PEFT's layout; PEFT's many other fields are kept as they are."""

    model_config = ConfigDict(extra="allow")
    peft_type: str = Field(min_length=1)
    base_model_name_or_path: str = Field(min_length=1)
    r: StrictInt = Field(gt=0)
    target_modules: list[str] | str


class Mapping(RootModel[dict[str, Any]]):
    pass


class EvalScores(RootModel[dict[str, StrictFloat | StrictInt]]):
    pass


@dataclass(frozen=True)
class TensorDigest:
    dtype: str
    shape: tuple[int, ...]
    digest: str
    bytes: int


@dataclass(frozen=True)
class Bundle:
    path: Path
    metadata: Metadata
    adapter_config: dict[str, Any]
    training_config: dict[str, Any]
    training_data_hash: str
    eval_scores: dict[str, float]
    inference_config: dict[str, Any]
    changelog: str
    tensors: dict[str, TensorDigest]

    @property
    def adapter_settings(self) -> dict[str, Any]:
        """The adapter config without the base model: together with the tensors, "the weights"."""
        return {k: v for k, v in self.adapter_config.items() if k != "base_model_name_or_path"}


def _read_text(root: Path, name: str, problems: list[str]) -> str | None:
    path = root / name
    if not path.is_file() or path.is_symlink():
        problems.append(f"{name}: missing")
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problems.append(f"{name}: not UTF-8 text")
    except OSError as exc:
        problems.append(f"{name}: cannot read ({exc.strerror})")
    return None


_MISSING = object()


def _load(root: Path, name: str, loader, problems: list[str]):
    """The parsed content of a JSON or YAML file, or _MISSING after noting the problem."""
    text = _read_text(root, name, problems)
    if text is None:
        return _MISSING
    try:
        return loader(text)
    except (ValueError, yaml.YAMLError) as exc:
        problems.append(f"{name}: not valid {'JSON' if name.endswith('.json') else 'YAML'} "
                        f"({str(exc).splitlines()[0]})")
        return _MISSING


def _validate(name: str, data, model: type[BaseModel], problems: list[str]):
    if data is _MISSING:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            problems.append(f"{name}: {where}: {error['msg']}")
    return None


def tensor_digests(path: Path) -> dict[str, TensorDigest]:
    """Each tensor's dtype, shape and BLAKE3 of its bytes: what decides whether weights changed."""
    header = read_header_from_path(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, \
            ThreadPoolExecutor(2) as pool:
        data = memoryview(mapped)
        try:
            digests = pool.map(lambda t: "b3:" + blake3.blake3(data[t.begin:t.end]).hexdigest(),
                               header.tensors.values())
            return {name: TensorDigest(t.dtype, tuple(t.shape), d, t.end - t.begin)
                    for (name, t), d in zip(header.tensors.items(), digests)}
        finally:
            data.release()


def load_bundle(root: Path) -> Bundle:
    """Read and validate every file of the bundle; InvalidInput names every problem at once."""
    if not root.is_dir():
        raise InvalidInput(f"bundle {root} is not a directory")
    problems: list[str] = []
    raw_metadata = _load(root, "metadata.yaml", yaml.safe_load, problems)
    if isinstance(raw_metadata, dict):
        for field in COMPUTED_FIELDS:
            if raw_metadata.pop(field, None) is not None:
                problems.append(f"metadata.yaml: {field}: computed by the store, remove it from the file")
    metadata = _validate("metadata.yaml", raw_metadata, Metadata, problems)
    adapter_config = _validate(ADAPTER_CONFIG, _load(root, ADAPTER_CONFIG, json.loads, problems),
                               AdapterConfig, problems)
    training_config = _validate("training_config.yaml", _load(root, "training_config.yaml", yaml.safe_load,
                                                              problems), Mapping, problems)
    inference_config = _validate("inference_config.yaml", _load(root, "inference_config.yaml", yaml.safe_load,
                                                               problems), Mapping, problems)
    eval_scores = _validate("eval_results.json", _load(root, "eval_results.json", json.loads, problems),
                            EvalScores, problems)
    changelog = _read_text(root, "changelog.md", problems)
    if changelog is not None and not changelog.strip():
        problems.append("changelog.md: empty")
    data_hash = _read_text(root, "training_data.hash", problems)
    if data_hash is not None:
        data_hash = data_hash.strip()
        if DATA_HASH.fullmatch(data_hash) is None:
            problems.append("training_data.hash: expected one line 'sha256:<64 hex>' or 'b3:<64 hex>'")
        elif metadata is not None and metadata.training_data_hash not in (None, data_hash):
            problems.append("metadata.yaml: training_data_hash differs from training_data.hash")
    if metadata is not None and adapter_config is not None \
            and metadata.base_model != adapter_config.base_model_name_or_path:
        problems.append(f"metadata.yaml: base_model {metadata.base_model!r} differs from "
                        f"adapter_config.json's base_model_name_or_path {adapter_config.base_model_name_or_path!r}")
    tensors = None
    if not (root / WEIGHTS).is_file() or (root / WEIGHTS).is_symlink():
        problems.append(f"{WEIGHTS}: missing")
    else:
        try:
            tensors = tensor_digests(root / WEIGHTS)
        except InvalidInput as exc:
            problems.append(f"{WEIGHTS}: {exc}")
    if problems:
        raise InvalidInput(f"bundle {root} is invalid: " + "; ".join(problems))
    return Bundle(root, metadata, adapter_config.model_dump(), training_config.root, data_hash,
                  eval_scores.root, inference_config.root, changelog, tensors)

