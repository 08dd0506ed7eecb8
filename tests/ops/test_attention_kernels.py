"""Packed-pass kernels: block mask and varlen plan equal the dense mask; outputs and log-probs match."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

import longact_pl.ops.attention_kernels as kernels
import longact_pl.ops.packed as packed
from longact_pl.masking.attention_tap import tap_attention
from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from longact_pl.ops.attention_kernels import KernelCall, choose_kernel, packed_attention
from longact_pl.ops.flex_block_mask import (
    block_layout,
    block_work,
    mark_tiles_dynamic,
    packed_block_mask,
    real_pairs,
)
from longact_pl.ops.packed import PackedCompletions, packing_unsupported
from longact_pl.ops.shared_prefix import grouped_completion_logprobs
from longact_pl.ops.varlen_attention import MergedVarlen, TorchVarlen, VarlenPlan
from tests.ops.test_shared_prefix import _assert_same

pytestmark = pytest.mark.usefixtures("one_thread")

# (prompt length per span, completion lengths per row of each span): several groups, long tails, empty rows
LAYOUTS = {
    "one_group": ([13], [[9, 2, 5]]),
    "three_groups_long_tail": ([40, 7, 23], [[1, 2, 3, 61], [30, 0, 1], [4, 4, 4, 4, 50]]),
    "ragged_tiles": ([5, 129], [[17, 33], [1, 1, 1, 70]]),
}


def _layout(prompts: list[int], rows: list[list[int]]) -> PackedCompletions:
    lengths = [n for group in rows for n in group]
    width = max(lengths)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()  # [R, C]
    ids = torch.randint(0, 100, mask.shape, generator=torch.Generator().manual_seed(0))
    row_span = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([len(g) for g in rows]))
    return PackedCompletions.build(ids, mask, row_span, torch.tensor(prompts))


def _reference_mask(prompts: list[int], rows: list[list[int]]) -> torch.Tensor:
    """``[T, sum(P) + T]`` by the definition, token by token: own prompt, own row up to itself."""
    tokens = [(s, r, c) for s, group in enumerate(rows) for r, n in enumerate(group) for c in range(n)]
    keys = [("p", s, None, None) for s, p in enumerate(prompts) for _ in range(p)]
    keys += [("c", s, r, c) for s, r, c in tokens]
    mask = torch.zeros(len(tokens), len(keys), dtype=torch.bool)
    for i, (s, r, c) in enumerate(tokens):
        for j, (kind, ks, kr, kc) in enumerate(keys):
            mask[i, j] = ks == s and (kind == "p" or (kr == r and kc <= c))
    return mask


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("block", [8, 16, 128])
def test_block_mask_equals_the_dense_mask(name, block):
    prompts, rows = LAYOUTS[name]
    layout = _layout(prompts, rows)
    want = _reference_mask(prompts, rows)  # [T, K]
    t, k = want.shape
    # the dense 4-D mask the SDPA path uses is the same mask
    assert torch.equal(create_mask(layout.mask_function(), 1, 1, t, k, "cpu")[0, 0], want)
    # tiles: the same classification as torch's own (dense) builder
    ref = create_block_mask(layout.mask_function(), 1, 1, t, k, device="cpu", BLOCK_SIZE=block)
    any_, full = block_layout(layout, block)
    ref_full = ref.full_kv_num_blocks
    assert any_.any() and (block > 8 or full.any())
    mask = packed_block_mask(layout, block)
    assert torch.equal(mask.to_dense()[0, 0].bool(), ref.to_dense()[0, 0].bool())
    assert torch.equal(mask.full_kv_num_blocks, ref_full) and torch.equal(
        mask.kv_num_blocks, ref.kv_num_blocks
    )
    # what a tiled kernel computes: set tiles, with the mask function applied off the full ones
    tiles = (any_ & ~full).repeat_interleave(block, 0).repeat_interleave(block, 1)[:t, :k]
    fulls = full.repeat_interleave(block, 0).repeat_interleave(block, 1)[:t, :k]
    elementwise = create_mask(mask.mask_mod, 1, 1, t, k, "cpu")[0, 0]
    assert torch.equal(fulls | (tiles & elementwise), want)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_varlen_plan_equals_the_dense_mask(name):
    prompts, rows = LAYOUTS[name]
    plan = VarlenPlan.from_layout(_layout(prompts, rows))
    assert torch.equal(plan.dense_mask(), _reference_mask(prompts, rows))
    assert plan.prompt_cu_k.tolist() == [0, *torch.tensor(prompts).cumsum(0).tolist()]


def _qkv(layout: PackedCompletions, heads: int = 4, kv_heads: int = 2, dim: int = 8, dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    k = layout.num_prompt_keys + layout.num_tokens
    q = torch.randn(1, heads, layout.num_tokens, dim, generator=gen, dtype=dtype)  # [1, h, T, d]
    key = torch.randn(1, kv_heads, k, dim, generator=gen, dtype=dtype)  # [1, h_kv, K, d]
    value = torch.randn(1, kv_heads, k, dim, generator=gen, dtype=dtype)  # [1, h_kv, K, d]
    return q, key, value


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # [1, h, T, d]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_flex_forward_matches_sdpa_with_the_dense_mask(name):
    prompts, rows = LAYOUTS[name]
    layout = _layout(prompts, rows)
    q, k, v = _qkv(layout, dtype=torch.float32)
    want = _sdpa(q, k, v, _reference_mask(prompts, rows))
    got = flex_attention(q, k, v, block_mask=packed_block_mask(layout, 16), enable_gqa=True)  # GQA: no repeat
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_merged_varlen_matches_sdpa_values_and_grads(name):
    prompts, rows = LAYOUTS[name]
    layout = _layout(prompts, rows)
    q, k, v = (x.requires_grad_() for x in _qkv(layout))
    scale = 0.3
    want = F.scaled_dot_product_attention(
        q, k, v, attn_mask=_reference_mask(prompts, rows), scale=scale, enable_gqa=True
    ).transpose(1, 2)  # [1, T, h, d]
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(2), dtype=want.dtype)
    want_grads = torch.autograd.grad((want * weights).sum(), (q, k, v))
    got = kernels.varlen_attention(q, k, v, VarlenPlan.from_layout(layout), TorchVarlen(), scale)
    got_grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    assert MergedVarlen is not None


def test_choose_kernel_by_implementation_and_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    table = {
        ("sdpa", cpu): "sdpa_mask",
        ("auto", cpu): "sdpa_mask",
        ("flex_attention", cpu): "sdpa_mask",
        ("eager", cpu): "sdpa_mask",
        ("eager", cuda): "sdpa_mask",
        ("sdpa", cuda): "flex",
        ("auto", cuda): "flex",
        ("flex_attention", cuda): "flex",
    }
    for (impl, device), want in table.items():
        kernel, reason = choose_kernel(impl, device, flash_available=False)
        assert kernel == want and reason, (impl, device)
    assert choose_kernel("flash_attention_2", "cuda", flash_available=True)[0] == "flash_varlen"
    kernel, reason = choose_kernel("flash_attention_2", "cuda", flash_available=False)
    assert kernel == "flex" and "flash-attn" in reason
    with pytest.raises(ValueError, match="model.attn_implementation='paged|sdpa'"):
        choose_kernel("paged|sdpa", "cuda")
    # forced kernels (the escape hatch a plan's config field can offer), refused where they cannot run
    assert choose_kernel("sdpa", "cuda", requested="sdpa_mask", field="f") == ("sdpa_mask", "f=sdpa_mask")
    assert choose_kernel("sdpa", "cpu", requested="sdpa_mask")[0] == "sdpa_mask"
    assert choose_kernel("sdpa", "cuda", False, requested="flex")[0] == "flex"
    for impl, device, kernel, match in [
        ("sdpa", "cpu", "flex", "needs a CUDA device"),
        ("eager", "cuda", "flex", "eager attention only takes sdpa_mask"),
        ("sdpa", "cuda", "flash_varlen", "needs flash-attn"),
        ("sdpa", "cuda", "dense", "one of auto, sdpa_mask, flex, flash_varlen"),
    ]:
        with pytest.raises(ValueError, match=f"train.packed_kernel='?{kernel}'?.*{match}"):
            choose_kernel(impl, device, False, requested=kernel, field="train.packed_kernel")


def _packed_fn(kernel: str, monkeypatch):
    """Packed log-probs with ``kernel`` forced (flash_varlen on the torch reference part kernel)."""
    monkeypatch.setattr(packed, "choose_kernel", lambda impl, device: (kernel, "forced by the test"))
    monkeypatch.setattr(kernels, "FlashVarlen", TorchVarlen)
    return _grouped(True)


P, C = 12, 9
GROUPS = [[9, 1, 4], [2, 9, 6, 3]]  # completion lengths per group (long tail, 1-token rows)


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two groups; group 1's prompt has 3 left-pad tokens; right-padded completions."""
    gen = torch.Generator().manual_seed(0)
    rows = [len(g) for g in GROUPS]
    ids = torch.randint(10, vocab, (sum(rows), P + C), generator=gen)
    mask = torch.ones_like(ids)
    for b, lengths in enumerate(GROUPS):
        first = sum(rows[:b])
        ids[first : first + rows[b], :P] = ids[first, :P]
        ids[first : first + rows[b], : 3 * b], mask[first : first + rows[b], : 3 * b] = 0, 0
        for r, length in enumerate(lengths):
            ids[first + r, P + length :], mask[first + r, P + length :] = 0, 0
    groups = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
    return ids, mask, groups


def _grouped(pack: bool):
    def fn(model, ids, mask, groups):
        return grouped_completion_logprobs(model, ids, mask, C, None, 0.7, True, pack=pack, row_groups=groups)

    return fn


def _run(model, fn, ids, mask, groups, grads: bool = True):
    """Masked log-probs, entropy and (with ``grads``) every parameter gradient of a weighted loss."""
    model.zero_grad(set_to_none=True)
    comp = mask[:, -C:].float()
    with torch.set_grad_enabled(grads):
        logp, ent = fn(model, ids, mask, groups)
    if not grads:
        return logp * comp, ent * comp, {}
    weights = torch.linspace(-1.0, 2.0, ids.shape[0], device=ids.device)[:, None]
    (logp * weights * comp).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach() * comp, ent * comp, grads


BUILDS = pytest.mark.parametrize("build", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])


@BUILDS
def test_packed_logprobs_on_flex_match_the_padded_path(build, monkeypatch):
    """Forward only: FlexAttention has no CPU backward (its gradients: the gpu test below)."""
    model = build(seed=0).model.eval()
    ids, mask, groups = _batch(model.config.vocab_size)
    want = _run(model, _grouped(False), ids, mask, groups, grads=False)
    got = _run(model, _packed_fn("flex", monkeypatch), ids, mask, groups, grads=False)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-5)


def test_flex_and_flash_get_one_dtype_under_autocast():
    """Under bf16 autocast a float32 q/k (Qwen3's q/k norms) meets a bf16 v: both kernels need one dtype."""
    q, k, v = torch.zeros(1, 2, 3, 8), torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert {t.dtype for t in kernels.same_dtype(q, k, v)} == {torch.bfloat16}
    assert {t.dtype for t in kernels.same_dtype(q, k, v)} == {torch.float32}


@BUILDS
@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "ckpt"])
def test_packed_logprobs_on_merged_varlen_match_the_padded_path_with_grads(build, ckpt, monkeypatch):
    model = build(seed=0, gradient_checkpointing=ckpt).model.train()
    ids, mask, groups = _batch(model.config.vocab_size)
    want = _run(model, _grouped(False), ids, mask, groups)
    _assert_same(_run(model, _packed_fn("flash_varlen", monkeypatch), ids, mask, groups), want)


def test_dispatched_dense_mask_kernel_matches_the_padded_path(monkeypatch):
    """``sdpa_mask`` for a model whose own attention is not sdpa/eager: SDPA on the bool mask, dispatched."""
    model = tiny_llama(seed=0).model.train()
    ids, mask, groups = _batch(model.config.vocab_size)
    want = _run(model, _grouped(False), ids, mask, groups)
    monkeypatch.setattr(packed, "inner_implementation", lambda m: "flex_attention")  # as a flex model sees it
    assert choose_kernel("flex_attention", ids.device)[0] == "sdpa_mask"
    calls = []
    real = kernels.kernel_call
    monkeypatch.setattr(kernels, "kernel_call", lambda *a: calls.append(real(*a)) or calls[-1])
    _assert_same(_run(model, _grouped(True), ids, mask, groups), want)
    assert [(c.kernel, c.calls) for c in calls] == [("sdpa_mask", 2)]  # both layers, through the dispatch


def test_attention_taps_see_the_packed_queries_on_a_dispatched_kernel(monkeypatch):
    model = tiny_llama(seed=0).model.eval()
    ids, mask, groups = _batch(model.config.vocab_size)
    shapes = []
    handle = tap_attention(
        model.model.layers[0].self_attn, lambda q, k: shapes.append((q.shape[2], k.shape[2]))
    )
    try:
        with torch.no_grad():
            _packed_fn("flex", monkeypatch)(model, ids, mask, groups)
    finally:
        handle.remove()
    tokens = sum(map(sum, GROUPS))
    prompts = P + (P - 3)
    assert (tokens, prompts + tokens) in shapes  # the packed pass's queries and keys, as attention got them


def test_kernels_refuse_what_they_cannot_serve():
    model = tiny_llama(seed=0).model
    model.config._attn_implementation = "eager"
    layout = _layout(*LAYOUTS["one_group"])
    with pytest.raises(ValueError, match="model.attn_implementation='eager'"):
        packed_attention(model, "eager", layout, "flex")
    call = KernelCall("flex", lambda q, k, v, scale: q)
    with pytest.raises(RuntimeError, match="served 0 of 2 attention layers"):
        call.check(2)
    with pytest.raises(NotImplementedError, match="dropout"):
        call(None, torch.zeros(1, 1, 1, 1), None, None, dropout=0.1)
    model.config._attn_implementation = "flash_attention_2"  # flash-attn is not installed here
    assert "flash-attn" in packing_unsupported(model)


def _long_tailed(prompt: int, group: int, longest: int) -> PackedCompletions:
    """One group of ``group`` completions with lengths falling off as ``longest / (r + 1)``."""
    return _layout([prompt], [[max(1, longest // (r + 1)) for r in range(group)]])


def test_flex_tiles_stay_within_the_goal_on_a_long_prompt():
    """Analytic: at P = 8k, G = 8 long-tailed completions, the 128-tiles compute < 1.2x the real pairs."""
    layout = _long_tailed(8192, 8, 4096)
    dense = layout.num_tokens * (layout.num_prompt_keys + layout.num_tokens)
    assert block_work(layout) < 1.2 * real_pairs(layout) < dense


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kernel", ["flex", "flash_varlen"])
@BUILDS
def test_packed_kernels_match_the_padded_path_in_bf16_on_cuda(build, kernel, monkeypatch):
    """bf16 autocast forward + backward: the packed pass on a CUDA kernel against the padded SDPA pass."""
    if kernel == "flash_varlen" and not kernels.flash_attn_available():
        pytest.skip("flash-attn is not installed")
    model = build(seed=0).model.train().cuda()
    ids, mask, groups = (t.cuda() for t in _batch(model.config.vocab_size))
    monkeypatch.setattr(packed, "choose_kernel", lambda impl, device: (kernel, "forced by the test"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = _run(model, _grouped(False), ids, mask, groups)
        got = _run(model, _grouped(True), ids, mask, groups)
    comp = mask[:, -C:].bool()
    assert torch.isfinite(got[0]).all()
    torch.testing.assert_close(got[0][comp], want[0][comp], atol=5e-2, rtol=5e-2)
    assert got[2].keys() == want[2].keys() and len(want[2]) > 0
    for name, g in want[2].items():
        scale = g.abs().max().clamp(min=1e-8)
        torch.testing.assert_close(got[2][name] / scale, g / scale, atol=5e-2, rtol=0, msg=name)
    # a second, differently shaped micro-batch: the compiled kernel takes new shapes (dynamic)
    ids2, mask2, groups2, width = ids[:5, :-2], mask[:5, :-2], groups[:5], C - 2
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        logp = [
            grouped_completion_logprobs(
                model, ids2, mask2, width, None, 0.7, False, pack=p, row_groups=groups2
            )[0]
            for p in (True, False)
        ]  # [5, C - 2] each
    real = mask2[:, -width:].bool()
    torch.testing.assert_close(logp[0][real], logp[1][real], atol=5e-2, rtol=5e-2)


@pytest.mark.slow  # ~15-30 s: one inductor compile of FlexAttention for the CPU (a C++ build)
def test_compiled_flex_takes_a_new_layout_without_recompiling():
    """The CUDA path compiles FlexAttention once with dynamic shapes and tile counts; another layout (other
    lengths and tile counts, a new mask closure) must reuse the graph. Checked with the CPU compiler."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    flex = torch.compile(flex_attention, dynamic=True)
    cases = [  # (2, 4) tiles twice, then (5, 9): other lengths and tile counts, a new mask closure each
        ([150, 40], [[30, 5, 77], [9, 100]]),
        ([200, 33, 7], [[130, 1], [4, 60, 2], [50]]),
        ([300, 140], [[10, 20, 256], [300]]),
    ]
    for prompts, rows in cases:
        layout = _layout(prompts, rows)
        q, k, v = _qkv(layout, dim=16, dtype=torch.float32)
        with torch.no_grad():
            got = flex(q, k, v, block_mask=mark_tiles_dynamic(packed_block_mask(layout)), enable_gqa=True)
        torch.testing.assert_close(got, _sdpa(q, k, v, _reference_mask(prompts, rows)), atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
