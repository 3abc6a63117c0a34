"""PEFT round trip with the real libraries: a tiny random causal LM made here (no download), a LoRA
adapter trained one step and saved by peft, pushed as it was saved, then served from the store as
a checkout (PeftModel.from_pretrained) and as tensors (set_peft_model_state_dict)."""

import json
import os
import stat

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from artifactstore import InvalidInput, InvalidParameter
from artifactstore.demo import write_bundle_files

# transformers 5.24 warns about its own deprecated attribute when peft wraps a model
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

CONFIG = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
BASE = "tiny-llama"
INPUTS = torch.tensor([[5, 17, 42, 99, 3, 64, 8, 120], [1, 2, 3, 4, 5, 6, 7, 8]])
SERVING = {"temperature": 0.2, "max_tokens": 64}


def base_model() -> LlamaForCausalLM:
    torch.manual_seed(0)  # the same base weights every time, as a server loads the same base
    return LlamaForCausalLM(CONFIG).eval()


def train_adapter(seed: int) -> PeftModel:
    """peft LoRA on q_proj and v_proj, trained one step (lora_B starts at zero, so the step is what
    makes the adapter change anything)."""
    model = get_peft_model(base_model(), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                    lora_dropout=0.0))
    torch.manual_seed(seed)
    batch = torch.randint(0, CONFIG.vocab_size, (2, 16))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    return model.eval()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(input_ids=INPUTS).logits


def save_bundle(model: PeftModel, directory, version: str, description: str, serving=SERVING):
    """The directory peft's save_pretrained writes, as it is, inside the seeds' bundle layout."""
    model.save_pretrained(directory / "adapter_weights")
    return write_bundle_files(directory, version, BASE, description, serving)


@pytest.fixture(scope="module")
def adapter():
    return train_adapter(seed=1)


@pytest.fixture
def pushed(store, tmp_path, adapter):
    bundle = save_bundle(adapter, tmp_path / "bundle", "v1.0.0", "one training step")
    store.push(bundle, "acme/tiny@v1.0.0")
    return store, bundle


def test_peft_save_is_pushed_as_it_is(pushed):
    _, bundle = pushed
    config = json.loads((bundle / "adapter_weights/adapter_config.json").read_text())
    # what made a peft save directory unpushable before: a base built from a config is recorded as null,
    # the weights are written owner-only, and peft adds a README.md
    assert config["base_model_name_or_path"] is None
    assert stat.S_IMODE(os.stat(bundle / "adapter_weights/adapter_model.safetensors").st_mode) == 0o600
    assert (bundle / "adapter_weights/README.md").is_file()


def test_checkout_loads_with_peft_and_gives_the_same_logits(pushed, adapter, tmp_path):
    store, _ = pushed
    expected = logits(adapter)
    assert not torch.equal(expected, logits(base_model())), "the trained adapter changes the outputs"
    checkout = store.checkout("acme/tiny@v1.0.0", tmp_path / "checkout")
    assert sorted(p.name for p in checkout.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors"]
    # readable by a server running as another user, whatever mode peft gave the files it saved
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(checkout.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((checkout / "adapter_model.safetensors").stat().st_mode) == 0o666 & ~umask
    served = PeftModel.from_pretrained(base_model(), checkout).eval()
    assert torch.equal(logits(served), expected)


def test_loaded_tensors_set_into_a_live_peft_model_give_the_same_logits(pushed, adapter):
    store, _ = pushed
    live = train_adapter(seed=2)  # a server's live model, serving another adapter
    assert not torch.equal(logits(live), logits(adapter))
    result = set_peft_model_state_dict(live, store.load("acme/tiny@v1.0.0", framework="torch"))
    assert not result.unexpected_keys
    assert torch.equal(logits(live), logits(adapter))


def test_a_resave_in_another_process_is_still_a_patch(pushed, adapter, tmp_path):
    """peft writes target_modules in set order, which PYTHONHASHSEED changes from process to process:
    the same adapter saved again must not read as changed adapter settings."""
    store, _ = pushed
    bundle = save_bundle(adapter, tmp_path / "resave", "v1.0.1", "lower temperature", SERVING | {"temperature": 0.1})
    config_path = bundle / "adapter_weights/adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = config["target_modules"][::-1]  # the order another process's save gives
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    assert store.push(bundle, "acme/tiny@v1.0.1").change == "patch"
    assert store.version_record("acme/tiny@v1.0.1")["adapter_settings"]["target_modules"] == ["q_proj", "v_proj"]


def test_a_retrained_adapter_is_a_minor_version(pushed, tmp_path):
    store, _ = pushed
    bundle = save_bundle(train_adapter(seed=3), tmp_path / "retrained", "v1.0.1", "retrained")
    with pytest.raises(InvalidParameter, match="adapter weights changed .* push it as v1.1.0"):
        store.push(bundle, "acme/tiny@v1.0.1")


@pytest.mark.parametrize("recorded, accepted", [
    (None, True),                         # a base built from a config
    ("/home/me/models/tiny", True),       # a base loaded from a directory: where, not which
    ("./models/tiny", True),
    (BASE, True),
    ("other-org/other-model", False),     # a name that disagrees with metadata.yaml is a mistake
])
def test_base_model_name_or_path(store, tmp_path, adapter, recorded, accepted):
    bundle = save_bundle(adapter, tmp_path / "bundle", "v1.0.0", "one training step")
    config_path = bundle / "adapter_weights/adapter_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"base_model_name_or_path": recorded}))
    if accepted:
        assert store.push(bundle, "acme/tiny@v1.0.0").created
        assert store.version_record("acme/tiny@v1.0.0")["base_model"] == BASE
    else:
        with pytest.raises(InvalidInput, match="base_model 'tiny-llama' differs from .* 'other-org/other-model'"):
            store.push(bundle, "acme/tiny@v1.0.0")
