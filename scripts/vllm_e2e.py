"""End to end with the real vLLM: a tiny random Llama served by vLLM's OpenAI server on the CPU, two
adapter versions in a store, the artifactstore resolver plugin inside vLLM and the gateway in front.

Checks that the gateway's answers for ``acme/tiny@production`` follow a promote and a rollback
without restarting anything, that a streamed answer equals the plain one, that a canary splits
by key, and that vLLM itself refuses a pointer and an adapter for another base model with the
resolver's messages. Prints one JSON summary. Run by scripts/vllm-e2e, in its own environment.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from artifactstore import Store
from artifactstore.demo import write_bundle_files

BASE_NAME = "tiny-llama"
VOCAB = 256
PROMPT = "w5 w6 w7 w8"
SERVING = {"temperature": 0.0, "max_tokens": 8}


def build_base(directory: Path) -> Path:
    """A random Llama (2 layers, hidden 128) and a word-level tokenizer, saved as vLLM loads them."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(directory)
    return directory


def save_adapter(base: Path, seed: int, directory: Path) -> None:
    """A LoRA adapter with random A and B (so that it changes the answers), saved by peft."""
    torch.manual_seed(seed)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(directory / "adapter_weights")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if process.poll() is not None:
            raise SystemExit(f"vLLM exited with status {process.returncode}; its log:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"vLLM did not answer {url} within {limit:.0f} s; its log:\n{log.read_text()[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where to build (default: a new temporary directory)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vllm-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    checks: dict[str, object] = {}

    started = time.monotonic()
    base = build_base(work / "base")
    store = Store.init(work / "store")
    for version, seed, description in (("v1.0.0", 1, "first adapter"), ("v1.1.0", 2, "retrained")):
        bundle = work / "bundles" / version
        save_adapter(base, seed, bundle)  # base_model_name_or_path: the base's directory, as peft saw it
        store.push(write_bundle_files(bundle, version, BASE_NAME, description, SERVING), f"acme/tiny@{version}")
    other = work / "bundles" / "v2.0.0"
    save_adapter(base, 3, other)
    store.push(write_bundle_files(other, "v2.0.0", "another-base", "moved to another base", SERVING),
               "acme/tiny@v2.0.0")
    store.promote("acme/tiny@v1.0.0")
    timings["build_and_push_s"] = time.monotonic() - started

    port = free_port()
    vllm_url = f"http://127.0.0.1:{port}"
    environment = os.environ | {
        "ARTIFACTSTORE_STORE": str(store.path), "ARTIFACTSTORE_ADAPTER_CACHE": str(work / "adapter-cache"),
        "ARTIFACTSTORE_BASE_MODEL": BASE_NAME,  # vLLM's --model is a directory; the registry calls it this
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_PLUGINS": "artifactstore", "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "128",
               "--enforce-eager", "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2", "--max-num-seqs", "4"]
    log = work / "vllm.log"
    with open(log, "w") as log_file:
        vllm = subprocess.Popen(command, env=environment, stdout=log_file, stderr=subprocess.STDOUT)
    gateway = None
    try:
        timings["vllm_start_s"] = wait_until_up(f"{vllm_url}/health", vllm, log, 600)
        gateway = subprocess.Popen([sys.executable, "-m", "artifactstore", "gateway", "--upstream", vllm_url,
                                    "--port", "0", "--store", str(store.path)], stdout=subprocess.PIPE, text=True)
        assert gateway.stdout is not None
        gateway_url = json.loads(gateway.stdout.readline())["listening"]
        client = httpx.Client(timeout=120)

        def complete(url: str, model: str, **fields) -> httpx.Response:
            return client.post(f"{url}/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 8,
                                                              "temperature": 0, **fields})

        def text(url: str, model: str, **fields) -> tuple[str, str | None]:
            answer = complete(url, model, **fields)
            if answer.status_code != 200:
                raise SystemExit(f"{model} via {url}: {answer.status_code} {answer.text}")
            return answer.json()["choices"][0]["text"], answer.headers.get("x-artifactstore-routed")

        first = time.monotonic()
        v1 = text(vllm_url, "acme/tiny@v1.0.0")[0]  # vLLM resolves and loads the adapter: the first use
        timings["first_resolve_and_answer_s"] = time.monotonic() - first
        v2 = text(vllm_url, "acme/tiny@v1.1.0")[0]
        plain = text(vllm_url, str(base))[0]
        checks["answers"] = {"base": plain, "v1.0.0": v1, "v1.1.0": v2}
        assert len({plain, v1, v2}) == 3, "the adapters change the answers, each its own way"

        sequence = [("production is v1.0.0", text(gateway_url, "acme/tiny@production"))]
        moved = time.monotonic()
        store.promote("acme/tiny@v1.1.0")
        sequence.append(("after promote v1.1.0", text(gateway_url, "acme/tiny@production")))
        timings["promote_to_new_answer_s"] = time.monotonic() - moved
        moved = time.monotonic()
        store.rollback("acme/tiny")
        sequence.append(("after rollback", text(gateway_url, "acme/tiny@production")))
        timings["rollback_to_old_answer_s"] = time.monotonic() - moved
        checks["gateway"] = [{"step": step, "routed": routed, "text": answer} for step, (answer, routed) in sequence]
        assert [answer for _, (answer, _) in sequence] == [v1, v2, v1]
        assert [routed for _, (_, routed) in sequence] == ["acme/tiny@v1.0.0", "acme/tiny@v1.1.0", "acme/tiny@v1.0.0"]
        assert vllm.poll() is None and gateway.poll() is None, "nothing restarted"

        with client.stream("POST", f"{gateway_url}/v1/completions",
                           json={"model": "acme/tiny@production", "prompt": PROMPT, "max_tokens": 8,
                                 "temperature": 0, "stream": True}) as streamed:
            events = [line.removeprefix("data: ") for line in streamed.iter_lines() if line.startswith("data: ")]
        checks["stream_events"] = len(events)
        assert events[-1] == "[DONE]" and "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == v1

        def median_ms(url: str, model: str, runs: int = 21) -> float:
            took = []
            for _ in range(runs):
                begun = time.perf_counter()
                text(url, model)
                took.append(time.perf_counter() - begun)
            return sorted(took)[runs // 2] * 1e3

        timings["answer_direct_ms"] = median_ms(vllm_url, "acme/tiny@v1.0.0")
        timings["answer_via_gateway_ms"] = median_ms(gateway_url, "acme/tiny@production")

        store.set_canary("acme/tiny@v1.1.0", 50)
        split = {}
        for key in (f"user-{i}" for i in range(20)):
            answer, routed = text(gateway_url, "acme/tiny@production", user=key)
            assert routed == store.route("acme/tiny@production", key)
            assert answer == {"acme/tiny@v1.0.0": v1, "acme/tiny@v1.1.0": v2}[routed]
            split[key] = routed
        checks["canary_50_percent_of_20_keys"] = sum(r == "acme/tiny@v1.1.0" for r in split.values())

        for name, expected in (("acme/tiny@production", "is a pointer"), ("acme/tiny@v2.0.0", "is an adapter for")):
            refused = complete(vllm_url, name)
            message = refused.json()["error"]["message"]
            checks[f"vllm_refuses_{name}"] = f"{refused.status_code}: {message}"
            assert refused.status_code == 400 and expected in message
        checks["vllm_version"] = client.get(f"{vllm_url}/version").json().get("version")
        checks["models_loaded_by_vllm"] = sorted(m["id"] for m in client.get(f"{vllm_url}/v1/models").json()["data"])
    finally:
        for process in (gateway, vllm):
            if process is not None:
                process.terminate()
                process.wait(60)
    print(json.dumps({"ok": True, "workdir": str(work), "timings": {k: round(v, 2) for k, v in timings.items()},
                      "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
