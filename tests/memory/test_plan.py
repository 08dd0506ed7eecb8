"""The memory plan's terms by hand for Qwen3-4B/8B, its phases, settings read from configs, fixes."""

import json
from dataclasses import replace

import pytest

from longact_pl.memory.activations import layer_bytes_per_token
from longact_pl.memory.advice import fixes, options
from longact_pl.memory.from_config import micro_batch, plan_inputs
from longact_pl.memory.plan import GIB, KV_GRADS, KV_HOLD, Settings, plan_memory
from longact_pl.memory.shapes import QWEN3_4B, QWEN3_8B, ModelShape, shape_of_model_config
from longact_pl.ops.head_blocks import ACCELERATOR_HEAD_BLOCK_BYTES
from tests.helpers import compose_train

Q4 = ModelShape.from_config(QWEN3_4B)
P32 = Settings(prompt_tokens=32768, completion_tokens=8192, completion_rows=8)  # bf16-mixed, checkpointing
TWO_PASS = replace(P32, interleaved=False)  # every prompt through all layers, then the completions


def test_parameter_counts_of_qwen3():
    """Qwen3-4B: 36 x (2560 x (4096 + 2 x 1024) + 4096 x 2560 + 3 x 2560 x 9728 + 2 x 2560 + 2 x 128) = 3.63B
    non-embedding (the model card's 3.6B) + 151936 x 2560 tied + 2560; Qwen3-8B: 6.95B + 2 x 151936 x 4096."""
    assert Q4.layer_params == 100_930_816
    assert Q4.params == 36 * 100_930_816 + 151936 * 2560 + 2560 == 4_022_468_096
    assert ModelShape.from_config(QWEN3_8B).params == 36 * 192_946_432 + 2 * 151936 * 4096 + 4096


def test_qwen3_4b_single_gpu_at_32k_by_hand():
    plan = plan_memory(Q4, TWO_PASS)
    n = 4_022_468_096
    assert plan.term("parameters") == plan.term("gradients") == 4 * n
    assert plan.term("AdamW moments") == 8 * n
    assert plan.term("autocast bf16 weights") == 2 * Q4.linear_params
    # at the switch: every layer's prompt keys (float32) and values (bf16) and their gradients (the packed
    # pass's gradient is a view of the [P + T]-key gradient)
    assert plan.term(KV_HOLD, "prompt backward") == 36 * 32768 * 1024 * (4 + 2)
    assert plan.term(KV_GRADS, "prompt backward") == 36 * (32768 + 8192) * 1024 * (4 + 2)
    assert plan.peak_phase == "prompt backward"
    assert plan.peak == max(plan.phase_total(p) for p in plan.phases)
    assert (
        plan.peak
        == plan.phase_total("prompt backward")
        == sum(t.bytes for t in plan.static + plan.phases["prompt backward"])
    )
    # without the hold the switch would not be the peak: the hold decides it
    without = plan.phase_total("prompt backward") - plan.term(KV_HOLD, "prompt backward")
    without -= plan.term(KV_GRADS, "prompt backward")
    assert without < max(plan.phase_total(p) for p in plan.phases if p != "prompt backward")
    # the LM head holds 6 B per logit of its 1024-token chunk (bf16 logits, the float32 softmax), a block
    # of rows of scratch (147 rows on a GPU) and 3 float32 copies of the 8k completion tokens' hidden
    # states: less than the recomputed completion layer
    head = 1024 * 151936 * (2 + 4) + 147 * 12 * 151936 + 3 * 8192 * 2560 * 4
    assert ACCELERATOR_HEAD_BLOCK_BYTES // (12 * 151936) == 147
    assert plan.term("LM-head chunk", "head backward") == head
    assert plan.peak_without_hold == plan.phase_total("completion backward") < plan.peak


def test_qwen3_4b_interleaved_at_32k_by_hand():
    """The layer-interleaved pass: no switch, no all-layer hold; one layer's K/V, gradients, recompute."""
    plan, two_pass = plan_memory(Q4, P32), plan_memory(Q4, TWO_PASS)
    assert set(plan.phases) == {"head backward", "layer backward", "optimizer step"}
    assert plan.term(KV_HOLD, "layer backward") == plan.term(KV_GRADS, "layer backward") == 0
    kv = 1024 * (4 + 2)  # float32 keys, bf16 values of 8 KV heads x 128
    assert plan.term("one layer's K/V gradients", "layer backward") == (32768 + 8192) * kv  # packed: [P + T]
    assert plan.term("one layer's prompt K/V", "layer backward") == 32768 * kv * 2  # + the packed copy
    full = layer_bytes_per_token(Q4, "bf16-mixed")
    recomputed = plan.term("one layer recomputed", "layer backward")
    assert (
        (32768 + 8192) * full < recomputed < (32768 + 8192) * full + 2 * GIB
    )  # + the completions' attention
    assert plan.term("one layer's backward", "layer backward") == 32768 * 4 * (2 * 2560 + 2 * 9728)
    assert plan.peak_phase == "layer backward" and two_pass.peak_phase == "prompt backward"
    # the planned drop at 32k: the 15.2 GiB hold (and the K/V the checkpoints kept) gone, one layer's
    # joint recomputation added
    assert (
        8 * GIB
        < two_pass.peak - plan.peak
        < two_pass.term(KV_HOLD, "prompt backward") + two_pass.term(KV_GRADS, "prompt backward")
    )
    assert plan.peak == plan.peak_without_hold
    # sequence parallelism keeps the two-pass order (ops/sequence_parallel), whatever the setting says
    sp = plan_memory(Q4, replace(P32, sequence_parallel=2))
    assert not sp.interleaved and sp.term(KV_GRADS, "prompt backward") > 0


def test_sharding_offload_and_sequence_parallel():
    single = plan_memory(Q4, TWO_PASS)
    fsdp = plan_memory(Q4, replace(TWO_PASS, strategy="fsdp", world=8))
    assert fsdp.term("AdamW moments") == single.term("AdamW moments") // 8  # 4,022,468,096 = 8 x 502,808,512
    assert fsdp.term("autocast bf16 weights") == 0 and fsdp.term("FSDP gathered params") > 0
    off = plan_memory(Q4, replace(TWO_PASS, strategy="fsdp", world=8, cpu_offload=True))
    assert all(t.host for t in off.static if t.name in ("parameters", "gradients", "AdamW moments"))
    assert off.peak_phase == fsdp.peak_phase == "prompt backward"
    assert off.peak == fsdp.peak - 4 * fsdp.term("parameters")  # parameters, gradients, moments: 1 + 1 + 2
    assert off.host == 4 * fsdp.term("parameters")  # params + grads + moments on the CPU
    on_cpu = plan_memory(Q4, replace(TWO_PASS, strategy="fsdp", world=8, cpu_offload=True, device="cpu"))
    assert on_cpu.peak > off.peak  # the CPU's memory holds the "host" terms too
    sp = plan_memory(Q4, replace(TWO_PASS, strategy="fsdp", world=8, sequence_parallel=2))
    assert sp.term(KV_HOLD, "prompt backward") * 2 == fsdp.term(KV_HOLD, "prompt backward")
    no_ckpt = plan_memory(Q4, replace(TWO_PASS, activation_checkpointing=False))
    assert no_ckpt.term("prompt activations", "prompt backward") > 10 * single.term(
        "prompt activations", "prompt backward"
    )


def test_vllm_share_and_reference():
    ref = plan_memory(Q4, replace(P32, reference=True))
    assert ref.peak - plan_memory(Q4, P32).peak == 4 * Q4.params
    engine = plan_memory(Q4, replace(P32, engine_bytes=30 * GIB))
    assert engine.peak - plan_memory(Q4, P32).peak == 30 * GIB


@pytest.mark.parametrize(
    "tokens,rows,expected",
    [
        (None, 4, (4, 1)),  # rows: one group of G = 4
        (None, 8, (8, 2)),  # two whole groups
        (None, 2, (2, 1)),  # part of a group
        (1000 + 4 * 100, 1, (4, 1)),  # budget = one whole group
        (2 * (1000 + 4 * 100) + 5, 1, (8, 2)),
        (1000 + 2 * 100 + 50, 1, (2, 1)),  # one prompt, two completions fit
    ],
)
def test_micro_batch_from_budget_or_rows(tokens, rows, expected):
    b = micro_batch(prompt=1000, completion=100, group_size=4, tokens=tokens, rows=rows, shared=True)
    assert (b.rows, b.groups) == expected
    assert b.prompt_tokens == 1000 * b.groups and b.completion_tokens == 100 * b.rows


def test_settings_from_the_paper_preset(tmp_path):
    cfg = compose_train(
        tmp_path, "experiment=paper_qwen3_4b_grpo", "model.name_or_path=Qwen/Qwen3-4B", "trainer.devices=8",
        tiny=False,
    )  # fmt: skip
    shape, s, batching = plan_inputs(cfg)
    assert shape.params == Q4.params
    # micro_batch_tokens=40960: one 33792-token prompt and one 4096-token completion (two would not fit)
    assert (s.prompt_tokens, s.completion_tokens, batching.rows) == (33792, 4096, 1)
    assert (s.strategy, s.world, s.precision, s.activation_checkpointing) == ("fsdp", 8, "bf16-mixed", True)
    assert s.reference and s.packed and s.device == "cuda" and s.engine_bytes == 0  # sleep_level=1
    assert s.engine_host_bytes == 2 * Q4.params  # bf16 weights offloaded by sleep level 1
    assert s.packed_kernel == "flex"  # sdpa on CUDA: the log-prob plan's FlexAttention block mask


def test_the_dense_packed_kernel_alone_builds_the_mask_and_whole_on_every_sequence_parallel_rank():
    small = ModelShape(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=256)
    dense = Settings(prompt_tokens=4096, completion_tokens=2048, completion_rows=8, device="cpu")
    mask = "packed attention mask"
    assert plan_memory(small, dense).term(mask, "head backward") == 2048 * (4096 + 2048)  # bool [T, P + T]
    # Ulysses: every rank builds the whole mask (its queries are all T positions for h / N heads)
    split = replace(dense, sequence_parallel=2)
    assert plan_memory(small, split).term(mask, "head backward") == 2048 * (4096 + 2048)
    for kernel in ("flex", "flash_varlen"):
        plan = plan_memory(small, replace(dense, packed_kernel=kernel, device="cuda"))
        assert plan.term(mask, "head backward") == 0
        dense_cuda = plan_memory(small, replace(dense, device="cuda"))
        assert plan.phase_total("head backward") < dense_cuda.phase_total("head backward")
    with pytest.raises(ValueError, match="packed_kernel"):
        plan_memory(small, replace(dense, packed_kernel="dense"))


def test_fixes_name_settings_that_fit():
    limit = 80 * GIB
    found = options(Q4, TWO_PASS, limit, prompt=32768, completion=1024)
    assert found and all(o.peak <= limit for o in found)
    assert any("cpu_offload=true" in o.overrides for o in found)
    # two-pass FSDP x8 at 32k: 45.1 GiB planned; two completions per micro-batch instead of eight: 43.8
    lines = fixes(Q4, replace(TWO_PASS, strategy="fsdp", world=8), 44 * GIB, prompt=32768, completion=1024)
    assert "would fit: module.learner.micro_batch_tokens=34816 -> 43.84 GiB (fits)" in lines, lines
    assert all(line.startswith("would fit:") for line in lines)


def test_shapes_of_model_groups(tmp_path):
    tiny = shape_of_model_config(
        {"_target_": "longact_pl.models.tiny.tiny_qwen3", "hidden_size": 64, "heads": 4}
    )
    assert (tiny.vocab, tiny.head_dim, tiny.intermediate, tiny.qk_norm) == (49152, 16, 128, True)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**QWEN3_8B, "num_hidden_layers": 2}))
    hf = {"_target_": "longact_pl.models.hf.load_hf", "name_or_path": str(folder)}
    assert shape_of_model_config(hf).layers == 2 and not shape_of_model_config(hf).tied
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))  # partial: no plan
    assert shape_of_model_config(hf) is None
    assert shape_of_model_config({**hf, "name_or_path": "Qwen/Qwen3-4B"}).params == Q4.params
    assert shape_of_model_config({**hf, "name_or_path": "org/unknown"}) is None


def test_the_plans_packed_kernels_are_the_ones_the_pass_runs():
    """``memory/plan.py`` stays torch-free, so it names the packed kernels itself: the same as the pass's."""
    from longact_pl.memory.plan import PACKED_KERNELS
    from longact_pl.ops.attention_kernels import KERNELS

    assert PACKED_KERNELS == KERNELS
