"""The vLLM adapter resolver and its cache of checked-out adapters.

vLLM itself is not installed for the suite (a 2.5 GB environment and a 40 s engine start; the
end-to-end run with the real vLLM is scripts/vllm-e2e, recorded in docs/serving.md). These tests
run the resolver against a stand-in of the vLLM 0.32.0 modules it uses, written below from their
source: ``vllm.lora.resolver`` (``LoRAResolver``, ``LoRAResolverRegistry``) and
``vllm.lora.request`` (``LoRARequest``, with its checks), and ``ask_like_vllm`` makes the
decisions vLLM's OpenAI server makes around a resolver (``OpenAIServingModels.resolve_lora`` and
its exception handler).
"""

import asyncio
import importlib.metadata
import json
import logging
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import make_tree, random_bytes

from artifactstore import InvalidParameter, NotFound
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.ids import parse_id
from artifactstore.serving.adapters import AdapterCache, parse_size
from artifactstore.serving.vllm import RESOLVER_NAME, adapter_int_id, register

HISTORY = adapter_history(layers=2, scale=16)
BASE = HISTORY[0].base_model

VLLM_STANDIN = {
    "vllm/__init__.py": "",
    "vllm/lora/__init__.py": "",
    "vllm/lora/request.py": '''
        from dataclasses import dataclass

        @dataclass(eq=False)
        class LoRARequest:  # vLLM: a msgspec.Struct with these fields, defaults and checks
            lora_name: str
            lora_int_id: int
            lora_path: str = ""
            base_model_name: str | None = None
            load_inplace: bool = False
            is_3d_lora_weight: bool = False

            def __post_init__(self):
                if self.lora_int_id < 1:
                    raise ValueError(f"id must be > 0, got {self.lora_int_id}")
                assert self.lora_path, "lora_path cannot be empty"

            def __eq__(self, value):
                return isinstance(value, self.__class__) and self.lora_name == value.lora_name

            def __hash__(self):
                return hash(self.lora_name)
        ''',
    "vllm/lora/resolver.py": '''
        from abc import ABC, abstractmethod
        from collections.abc import Set
        from dataclasses import dataclass, field

        from vllm.lora.request import LoRARequest

        class LoRAResolver(ABC):
            @abstractmethod
            async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
                pass

        @dataclass
        class _LoRAResolverRegistry:
            resolvers: dict[str, LoRAResolver] = field(default_factory=dict)

            def get_supported_resolvers(self) -> Set[str]:
                return self.resolvers.keys()

            def register_resolver(self, resolver_name: str, resolver: LoRAResolver) -> None:
                self.resolvers[resolver_name] = resolver  # vLLM warns first if the name is taken

            def get_resolver(self, resolver_name: str) -> LoRAResolver:
                if resolver_name not in self.resolvers:
                    raise KeyError(f"LoRA resolver '{resolver_name}' not found.")
                return self.resolvers[resolver_name]

        LoRAResolverRegistry = _LoRAResolverRegistry()
        ''',
}


@pytest.fixture
def vllm(tmp_path, monkeypatch):
    """The stand-in vllm package, importable for the test; the vllm.lora modules as a namespace."""
    root = make_tree(tmp_path / "vllm-standin",
                     {path: textwrap.dedent(text).encode() for path, text in VLLM_STANDIN.items()})
    monkeypatch.syspath_prepend(str(root))
    yield
    for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture
def resolver(vllm, served, tmp_path, monkeypatch):
    """The resolver as vLLM gets it: configured by the environment, registered by the entry point."""
    monkeypatch.setenv("ARTIFACTSTORE_STORE", str(served.path))
    monkeypatch.setenv("ARTIFACTSTORE_ADAPTER_CACHE", str(tmp_path / "adapters"))
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")
    register()
    from vllm.lora.resolver import LoRAResolverRegistry

    found = LoRAResolverRegistry.get_resolver(RESOLVER_NAME)
    yield found
    found.cache.close()


def ask_like_vllm(name: str, base_model_name: str = BASE):
    """What vLLM 0.32's OpenAI server answers for a model it does not know yet: each resolver in
    turn; a LoRARequest is loaded under the server's own id; none found is a 404; an exception is
    answered by the server's handlers (a ValueError: 400 with its message)."""
    from vllm.lora.resolver import LoRAResolverRegistry

    for resolver_name in LoRAResolverRegistry.get_supported_resolvers():
        try:
            request = asyncio.run(LoRAResolverRegistry.get_resolver(resolver_name).resolve_lora(base_model_name,
                                                                                                name))
        except ValueError as exc:
            return 400, str(exc)
        if request is not None:
            request.lora_int_id = 1  # vLLM's server numbers adapters itself
            return 200, request
    return 404, f"The model `{name}` does not exist."


def files(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_the_plugin_is_declared_for_vllm():
    entry = next(e for e in importlib.metadata.entry_points(group="vllm.general_plugins") if e.name == "artifactstore")
    assert entry.value == "artifactstore.serving.vllm:register"
    assert entry.load() is register


def test_a_version_resolves_to_its_checked_out_adapter(resolver, served, tmp_path):
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    assert isinstance(resolver, LoRAResolver)
    request = asyncio.run(resolver.resolve_lora(BASE, "acme/support@v1.1.0"))
    assert isinstance(request, LoRARequest) and request.lora_name == "acme/support@v1.1.0"
    bundle = served.resolve("acme/support@v1.1.0")
    assert request.lora_int_id == adapter_int_id(bundle) >= 1
    assert request.lora_path == str(tmp_path / "adapters" / parse_id(bundle).hex())
    checkout = served.checkout("acme/support@v1.1.0", tmp_path / "checkout")
    assert files(resolver.cache.path(bundle)) == files(checkout)


def test_a_bundle_id_resolves_to_the_same_directory(resolver, served):
    by_version = asyncio.run(resolver.resolve_lora(BASE, "acme/support@v1.1.1"))
    bundle = served.resolve("acme/support@v1.1.1")
    by_id = asyncio.run(resolver.resolve_lora(BASE, bundle))
    assert (by_id.lora_path, by_id.lora_int_id) == (by_version.lora_path, by_version.lora_int_id)
    assert by_id.lora_name == bundle


def test_a_pointer_is_refused_with_how_to_route_it(resolver):
    status, message = ask_like_vllm("acme/support@production")
    assert status == 400
    assert message.startswith("acme/support@production is a pointer, and vLLM keeps what a name resolved to")
    assert "`artifactstore route acme/support@production`" in message and "artifactstore gateway" in message
    assert ask_like_vllm("acme/support@latest")[0] == 400


def test_an_adapter_for_another_base_model_is_refused(resolver, monkeypatch, served, tmp_path):
    status, message = ask_like_vllm("acme/support@v1.0.0", base_model_name="/models/llama-3-8b-instruct")
    assert status == 400
    assert message == ("acme/support@v1.0.0 is an adapter for meta-llama/Meta-Llama-3-8B-Instruct, and this server "
                       "runs /models/llama-3-8b-instruct (if that is the same model, add "
                       "meta-llama/Meta-Llama-3-8B-Instruct to ARTIFACTSTORE_BASE_MODEL)")
    monkeypatch.setenv("ARTIFACTSTORE_BASE_MODEL", f"llama-3-8b, {BASE}")
    monkeypatch.setenv("ARTIFACTSTORE_ADAPTER_CACHE", str(tmp_path / "other-adapters"))
    register()  # the same name again replaces the resolver, as vLLM's registry does
    status, request = ask_like_vllm("acme/support@v1.0.0", base_model_name="/models/llama-3-8b-instruct")
    assert status == 200 and request.lora_path.startswith(str(tmp_path / "other-adapters"))


def test_names_that_are_not_this_stores_are_left_to_other_resolvers(resolver, served):
    assert ask_like_vllm("my-own-lora") == (404, "The model `my-own-lora` does not exist.")
    assert ask_like_vllm("acme/support@v9.9.9")[0] == 404
    assert ask_like_vllm("acme/nothing@v1.0.0")[0] == 404
    assert ask_like_vllm("b3:" + "0" * 64)[0] == 404
    assert ask_like_vllm("Acme/Support@v1.0.0")[0] == 400, "a malformed name says why"


def test_a_bundle_without_adapter_weights_is_refused_with_a_400(resolver, served, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    pushed = served.resolve("acme/support@v1.0.0")
    (bare / "metadata.yaml").write_bytes(served.content.read_tree_file(pushed, "metadata.yaml"))
    status, message = ask_like_vllm(served.put(bare).id)
    assert status == 400 and "adapter_weights" in message, message


def test_register_without_a_store_registers_nothing(vllm, monkeypatch, caplog):
    from vllm.lora.resolver import LoRAResolverRegistry

    monkeypatch.delenv("ARTIFACTSTORE_STORE", raising=False)
    with caplog.at_level(logging.ERROR, logger="artifactstore.serving.vllm"):
        register()
    assert RESOLVER_NAME not in LoRAResolverRegistry.get_supported_resolvers()
    assert "set ARTIFACTSTORE_STORE to the store vLLM should load adapters from" in caplog.text


def test_the_cache_is_reused_and_written_atomically(resolver, served, tmp_path):
    first = asyncio.run(resolver.resolve_lora(BASE, "acme/support@v1.0.0"))
    inode = (tmp_path / "adapters").joinpath(first.lora_path).stat().st_ino
    again = asyncio.run(resolver.resolve_lora(BASE, "acme/support@v1.0.0"))
    assert again.lora_path == first.lora_path
    assert (tmp_path / "adapters").joinpath(again.lora_path).stat().st_ino == inode, "not checked out again"
    # concurrent resolves of one bundle under two names: one directory, complete, nothing left over
    bundle = served.resolve("acme/support@v1.1.0")
    results = []
    threads = [threading.Thread(target=lambda name=name: results.append(resolver.resolve(BASE, name)))
               for name in ("acme/support@v1.1.0", bundle) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {path for path, _ in results} == {resolver.cache.path(bundle)}
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == sorted(
        [parse_id(served.resolve(f"acme/support@{v}")).hex() + suffix for v in ("v1.0.0", "v1.1.0")
         for suffix in ("", ".lock")])


def adapter_bytes(store) -> int:
    return sum(t["bytes"] for t in store.version_record("acme/support@v1.0.0")["tensors"].values())


def test_the_cache_evicts_the_least_recently_used_adapter(served, tmp_path):
    directory = tmp_path / "adapters"
    limit = int(adapter_bytes(served) * 2.5)  # room for two adapters

    def use(version: str) -> None:
        cache = AdapterCache(served.content, directory, limit)  # a server's life: it holds what it took
        cache.get(served.resolve(f"acme/support@{version}"))
        cache.close()

    def cached() -> set[str]:
        return {version for version in ("v1.0.0", "v1.1.0", "v1.1.1")
                if (directory / parse_id(served.resolve(f"acme/support@{version}")).hex()).is_dir()}

    use("v1.0.0")
    use("v1.1.0")
    use("v1.0.0")  # now the most recently used
    assert cached() == {"v1.0.0", "v1.1.0"}
    use("v1.1.1")
    assert cached() == {"v1.0.0", "v1.1.1"}
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "no staging or evicted leftovers"
    assert sorted(p.name for p in directory.glob("*.lock")) == sorted(
        parse_id(served.resolve(f"acme/support@{v}")).hex() + ".lock" for v in ("v1.0.0", "v1.1.1"))


HOLDER = """
import sys
from artifactstore import Store
from artifactstore.serving.adapters import AdapterCache
store = Store(sys.argv[1])
AdapterCache(store.content, sys.argv[2], 1).get(store.resolve(sys.argv[3]))
print("holding", flush=True)
sys.stdin.read()
"""


def test_an_adapter_another_process_serves_is_never_evicted(served, tmp_path):
    """vLLM reads an adapter's files again when it reloads one it let go of: a directory handed to
    a server stays while that server runs, whatever the size limit."""
    directory = tmp_path / "adapters"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(served.path), str(directory), "acme/support@v1.0.0"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        cache = AdapterCache(served.content, directory, 1)
        mine = cache.get(served.resolve("acme/support@v1.1.0"))
        theirs = cache.path(served.resolve("acme/support@v1.0.0"))
        assert mine.is_dir() and theirs.is_dir(), "both are held: the limit is exceeded, nothing deleted"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert cache.evict() == [theirs.name]
    assert mine.is_dir() and not theirs.exists()
    cache.close()


def test_a_failed_checkout_leaves_nothing(served, tmp_path):
    not_a_bundle = served.put(make_tree(tmp_path / "tree", {"notes.txt": random_bytes(100)})).id
    cache = AdapterCache(served.content, tmp_path / "adapters", 1 << 30)
    with pytest.raises(NotFound, match="has no adapter_weights/"):
        cache.get(not_a_bundle)
    assert list((tmp_path / "adapters").iterdir()) == []


@pytest.mark.parametrize("text, size", [("1048576", 1 << 20), ("10GiB", 10 << 30), ("512M", 512 << 20),
                                        ("2 TB", 2 << 40), ("64kib", 64 << 10)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "1.5G", "-1", "5X"])
def test_parse_size_refuses(text):
    with pytest.raises(InvalidParameter, match="not a size"):
        parse_size(text)


def test_a_bundle_id_with_a_bad_metadata_file_is_refused(resolver, served, tmp_path):
    bundle = write_bundle(HISTORY[0], tmp_path / "odd")
    (bundle / "metadata.yaml").write_text(json.dumps({"base_model": BASE, "version": "v1.0.0"}))
    tree = served.put(bundle).id  # stored, but no push would take it: change_description is missing
    assert ask_like_vllm(tree) == (400, f"{tree}: metadata.yaml: change_description: Field required")
