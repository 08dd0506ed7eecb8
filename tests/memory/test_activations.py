"""The plan's per-token activation bytes equal what autograd saves in a Llama / Qwen3 decoder layer."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from longact_pl.memory.activations import kv_bytes_per_token, layer_bytes_per_token
from longact_pl.memory.shapes import ModelShape

# distinct widths so that no two terms can stand in for each other: q = 120, k = 40, H = 96, I = 200
CONFIG = dict(vocab_size=300, hidden_size=96, intermediate_size=200, num_hidden_layers=1,
              num_attention_heads=6, num_key_value_heads=2, head_dim=20,
              tie_word_embeddings=True)  # fmt: skip
MODELS = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen3": (Qwen3ForCausalLM, Qwen3Config)}


def _saved_bytes(model, tokens: int, amp: bool) -> int:
    """Bytes of the distinct tensors one decoder layer saves for backward (parameters excluded)."""
    ids = torch.randint(0, CONFIG["vocab_size"], (1, tokens))
    params = {p.data_ptr() for p in model.parameters()}
    x = model.model.embed_tokens(ids).detach().requires_grad_(True)  # [1, T, H]
    positions = torch.arange(tokens).unsqueeze(0)  # [1, T]
    cos, sin = model.model.rotary_emb(x, positions)  # shared by every layer: not a layer's memory
    outside = params | {cos.data_ptr(), sin.data_ptr()}
    saved = {}

    def pack(t):
        if t.data_ptr() not in outside:
            saved[(t.data_ptr(), t.dtype, t.numel())] = t.numel() * t.element_size()
        return t

    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model.model.layers[0](x, position_embeddings=(cos, sin), attention_mask=None, position_ids=positions)
    return sum(saved.values())


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_layer_bytes_per_token_match_what_autograd_saves(arch, precision):
    model_cls, config_cls = MODELS[arch]
    config = config_cls(**CONFIG)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = model_cls(config)
    amp = precision == "bf16-mixed"
    # the difference of two lengths: per-token tensors only (a weight's bf16 copy is saved at both)
    per_token = (_saved_bytes(model, 96, amp) - _saved_bytes(model, 32, amp)) / 64
    shape = ModelShape.from_config({**CONFIG, "model_type": arch})
    assert per_token == layer_bytes_per_token(shape, precision)


def test_kv_bytes_keys_float32_values_bf16_under_autocast():
    """Keys leave RoPE in float32 (float32 cos), values leave v_proj in bf16: 4 + 2 bytes per element."""
    from longact_pl.ops.shared_prefix import prompt_pass

    config = Qwen3Config(**CONFIG)
    config._attn_implementation = "sdpa"
    model = Qwen3ForCausalLM(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kv, _ = prompt_pass(model.model, torch.randint(0, 300, (1, 8)), 1, None)
    keys, values = kv[0]  # [1, 2, 8, 20]
    held = keys.numel() * keys.element_size() + values.numel() * values.element_size()
    shape = ModelShape.from_config({**CONFIG, "model_type": "qwen3"})
    assert held == 8 * kv_bytes_per_token(shape, "bf16-mixed") == 8 * 40 * (4 + 2)
    assert kv_bytes_per_token(shape, "32-true") == 40 * 8
