"""Ulysses sequence parallelism on 2 CPU ranks (gloo) against one process.

Each rank holds half of every sequence; log-probs, entropy, every parameter gradient (summed over the two
ranks, as FSDP2's reduce-scatter does) and LongAct's statistics (summed, as ``SaliencyMask`` does) must equal
the single-process paths on the whole sequences.

The packed pass also runs on the plan's CUDA kernels (``LogprobPlan.packed_kernel``) where the CPU allows:
flash-attn varlen with the torch reference part kernel (values and gradients) and FlexAttention (forward
only: its backward is CUDA-only); the layouts the ranks built for them are checked against the dense mask.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

import longact_pl.ops.attention_kernels as kernels
import longact_pl.ops.sequence_parallel.logprobs as sp_logprobs
from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.distributed import LocalOps
from longact_pl.group_exit import close_process_group
from longact_pl.guards import NonFiniteGuard
from longact_pl.learner import Learner
from longact_pl.masking.stats import StatsCollector, sync_stats
from longact_pl.masking.targets import find_targets
from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from longact_pl.ops.chunked import chunked_completion_logprobs
from longact_pl.ops.packed import PackedCompletions
from longact_pl.ops.policy_logprobs import LogprobCall, LogprobPass
from longact_pl.ops.sequence_parallel import SPGroup, enable_ulysses, kv_repeats
from longact_pl.ops.sequence_parallel.attention import KVRecord
from longact_pl.ops.sequence_parallel.comm import from_first_rank
from longact_pl.ops.shared_prefix import grouped_completion_logprobs
from longact_pl.ops.varlen_attention import TorchVarlen, VarlenPlan
from longact_pl.strategies import shard_model
from tests.ops.test_attention_kernels import LAYOUTS, _layout
from tests.ops.test_shared_prefix import _assert_same
from tests.test_learner import _rollouts

WORLD = 2
G = 3
QK_AT = ("proj", "post_rope")  # where LongAct statistics read q/k: projection outputs, attention's inputs
BUILDERS = {"llama": tiny_llama, "qwen3": tiny_qwen3}


class Case(NamedTuple):
    """One comparison: 2 ranks through ``LogprobPass`` vs the single-process path."""

    model: str  # llama | qwen3
    kv: int  # KV heads (4 query heads; 1 KV head for 2 ranks: the repeat path)
    attn: str  # sdpa | eager
    shared: bool  # shared prompt (else per row)
    ckpt: bool  # gradient checkpointing
    chunk: int | None  # LM-head chunk
    prompt: int  # P (odd lengths exercise the padding of the last shard)
    completion: int  # C
    fsdp: bool = False  # FSDP2 over the 2 ranks
    pack: bool = False  # completions packed in one row
    pad_spans: int = 0  # lock-step dummy spans (parallel side only: they change nothing)
    entropy_grad: bool = False  # the entropy keeps its gradient and enters the loss (the entropy bonus)
    skip_prompt: bool = False  # group 1's prompt is not counted (another micro-batch counted it)
    kernel: str | None = None  # the plan's packed kernel (None: chosen for the device, the dense mask on CPU)
    odd: bool = False  # one token fewer: the packed row needs the split's padding row


CASES = [
    Case("llama", 2, "sdpa", True, False, None, 13, 6),
    Case("qwen3", 2, "sdpa", True, True, 4, 13, 7),
    Case("llama", 1, "sdpa", True, True, None, 12, 5, pad_spans=1),
    Case("qwen3", 1, "eager", True, False, 3, 11, 6),
    Case("llama", 2, "sdpa", False, True, 5, 13, 6),
    Case("qwen3", 1, "sdpa", False, False, None, 12, 7),
    Case("llama", 1, "eager", False, True, None, 11, 5),
    Case("qwen3", 2, "sdpa", True, True, 4, 12, 7, fsdp=True),
    Case("llama", 1, "sdpa", False, True, 3, 13, 6, fsdp=True),
    Case("llama", 2, "sdpa", True, True, 4, 13, 7, pack=True),
    Case("qwen3", 1, "eager", True, False, None, 12, 6, pack=True, pad_spans=2),
    Case("qwen3", 2, "sdpa", True, True, None, 11, 5, fsdp=True, pack=True),
    Case("llama", 1, "sdpa", True, False, 4, 13, 6, entropy_grad=True, skip_prompt=True),
    Case("qwen3", 2, "eager", True, True, None, 12, 7, False, True, 1, entropy_grad=True, skip_prompt=True),
    Case("llama", 2, "sdpa", False, False, 3, 11, 5, entropy_grad=True),
    # the plan's flash-attn varlen kernel (its part kernel: the torch reference on CPU), values and gradients
    Case(
        "llama", 1, "sdpa", True, True, None, 13, 6, pack=True, pad_spans=1, kernel="flash_varlen", odd=True
    ),
    Case("qwen3", 2, "sdpa", True, False, 4, 12, 7, True, True, entropy_grad=True, kernel="flash_varlen"),
]
# FlexAttention, forward only on CPU: the 2 ranks against the dense-mask 2 ranks and the single process
FLEX_CASES = [
    Case("llama", 1, "sdpa", True, False, None, 13, 6, pack=True, pad_spans=1, odd=True),
    Case("qwen3", 2, "sdpa", True, False, 4, 12, 7, pack=True),
]


def _batch(vocab: int, prompt: int, completion: int, odd: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """2 groups of G rows sharing a prompt; group 1 has 4 left-pad tokens; row r of a group ends r early
    (``odd``: the last row one more, so the packed completions count an odd number of tokens)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (2 * G, prompt + completion), generator=gen)
    mask = torch.ones_like(ids)
    for b in range(2):
        rows = slice(b * G, (b + 1) * G)
        ids[rows, :prompt] = ids[b * G, :prompt]
        ids[rows, : 4 * b], mask[rows, : 4 * b] = 0, 0
        for r in range(1, G):
            ids[b * G + r, -r:], mask[b * G + r, -r:] = 0, 0
    if odd:
        ids[-1, -G:], mask[-1, -G:] = 0, 0
    return ids, mask


def _model(case: Case):
    model = BUILDERS[case.model](kv_heads=case.kv, seed=0, gradient_checkpointing=case.ckpt).model.train()
    model.config._attn_implementation = case.attn
    return model


def _reduce(t: torch.Tensor, reduce_op: str) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM if reduce_op == "sum" else dist.ReduceOp.MAX)
    return t


def _run(case: Case, fn, sp: SPGroup | None = None, prepare=None):
    """Log-probs, entropy, every gradient of a weighted loss, the real tokens the hook was told about, and
    LongAct statistics of q_proj/k_proj (read at the projections and after RoPE), summed over the ranks."""
    model = _model(case)
    if prepare is not None:
        prepare(model)
    completion = case.completion
    ids, mask = _batch(model.config.vocab_size, case.prompt, completion, case.odd)
    current: list[torch.Tensor | None] = [None]
    probes = {at: {t.name: t.probe for t in find_targets(model, ("q_proj", "k_proj"), at)} for at in QK_AT}
    collectors = {at: StatsCollector(p, gate=lambda: current[0]) for at, p in probes.items()}
    for collector in collectors.values():
        collector.attach()
    extra = {"count_prompts": torch.arange(2 * G) < G} if case.skip_prompt else {}  # [N]
    logp, ent = fn(model, ids, mask, completion, temperature=0.7, with_entropy=True,
                   token_mask_hook=lambda m: current.__setitem__(0, m), **extra)  # fmt: skip
    comp = mask[:, -completion:].float()
    weights = torch.linspace(-1.0, 2.0, ids.shape[0])[:, None]  # distinct per-row "advantages"
    loss = (logp * weights * comp).sum()
    if case.entropy_grad:  # an entropy bonus with its own per-row weights: its gradient must be exact too
        assert ent.requires_grad
        loss = loss - (ent * torch.linspace(0.5, -1.5, ids.shape[0])[:, None] * comp).sum()
    loss.backward()  # gradient checkpointing replays forwards: the gate is None
    stats = {at: c.reset() for at, c in collectors.items()}
    for collector in collectors.values():
        collector.detach()
    if case.fsdp and sp is not None:  # FSDP2 reduce-scattered the mean of the ranks' partial gradients
        grads = {n: p.grad.full_tensor() * WORLD for n, p in model.named_parameters() if p.grad is not None}
    else:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if sp is not None:  # what FSDP2's reduce-scatter does: the sum of the ranks' partial gradients
            for g in grads.values():
                dist.all_reduce(g)
    if sp is not None:  # as SaliencyMask does with the training forwards' statistics
        for per_target in stats.values():
            sync_stats(per_target, _reduce)
    summary = {(at, k): (s.sum_abs, s.max_abs, s.count) for at, per in stats.items() for k, s in per.items()}
    return logp.detach() * comp, ent.detach() * comp, grads, summary


def _single(case: Case):
    if case.shared:
        fn = functools.partial(
            grouped_completion_logprobs, group_size=G, chunk_size=case.chunk, pack=case.pack,
            entropy_grad=case.entropy_grad,
        )  # fmt: skip
        return _run(case, lambda m, i, a, c, **kw: fn(m, i, a, c, **kw))

    def per_row(m, i, a, c, token_mask_hook, **kw):
        return _with_hook(
            token_mask_hook, a,
            lambda: chunked_completion_logprobs(
                m, i, a, c, chunk_size=case.chunk, entropy_grad=case.entropy_grad, **kw
            ),
        )  # fmt: skip

    return _run(case, per_row)


def _with_hook(hook, mask, fn):
    hook(mask.bool())
    try:
        return fn()
    finally:
        hook(None)


def _parallel(case: Case, sp: SPGroup):
    """Through the trainer's ``LogprobPass`` with its sequence-parallel group (as ``LongActFSDP`` sets)."""
    lp = []

    def prepare(model):  # planned before the strategy wraps the model, as LongActModule does
        lp.append(_plan(model, case))
        enable_ulysses(model, sp.size)
        if case.fsdp:
            shard_model(model, init_device_mesh("cpu", (WORLD,)))

    def fn(model, ids, mask, width, token_mask_hook, count_prompts=None, **kw):
        call = LogprobCall(ids, mask, width, **kw, count_prompts=count_prompts, pad_spans=case.pad_spans)
        assert lp[0].plan.pack == case.pack
        return lp[0](model, call, token_mask_hook, sp)  # the group, as the learner takes it from its dist

    return _run(case, fn, sp, prepare)


def _plan(model, case: Case, kernel: str | None = None) -> LogprobPass:
    """The case's log-prob pass; a packed kernel set as ``LogprobPlan.on_device`` sets it on CUDA."""
    lp = LogprobPass.for_model(model, case.shared, case.chunk, case.pack, case.entropy_grad)
    kernel = kernel or case.kernel
    return LogprobPass(dataclasses.replace(lp.plan, packed_kernel=kernel)) if kernel else lp


def _packed_forward(case: Case, sp: SPGroup | None = None, kernel: str | None = None):
    """Forward only (no gradients): masked packed log-probs and entropy, on 2 ranks with ``kernel`` or in
    one process (the dense mask)."""
    model = _model(case)
    ids, mask = _batch(model.config.vocab_size, case.prompt, case.completion, case.odd)
    with torch.no_grad():
        if sp is None:
            logp, ent = grouped_completion_logprobs(model, ids, mask, case.completion, G, 0.7, True,
                                                    case.chunk, pack=True)  # fmt: skip
        else:
            lp = _plan(model, case, kernel)
            enable_ulysses(model, sp.size)
            call = LogprobCall(ids, mask, case.completion, 0.7, True, pad_spans=case.pad_spans)
            logp, ent = lp(model, call, sp=sp)
    comp = mask[:, -case.completion :].float()
    return logp * comp, ent * comp


def _only_dummies(sp: SPGroup) -> torch.Tensor:
    """A rank with no rows left runs lock-step dummies only: ``[0, C]`` log-probs and a backward."""
    model = _model(CASES[1])
    lp = LogprobPass.for_model(model, chunk_size=4, pack_completions=True)
    enable_ulysses(model, sp.size)
    ids, mask = _batch(model.config.vocab_size, 9, 5)
    logp, _ = lp(model, LogprobCall(ids[:0], mask[:0], 5, pad_spans=2), sp=sp)
    logp.sum().backward()
    return logp


def _through_learner(sp: SPGroup | None):
    """The learner's training pass (entropy bonus: entropy with its gradient) on a shared-prompt plan, the
    sequence-parallel group taken from the collectives it is given (``DistOps.sequence_parallel``)."""
    model = _model(CASES[0])
    plan = LogprobPass.for_model(model, shared_prefix=True, chunk_size=4, entropy_grad=True)
    learner = Learner(GroupPolicyGradient(entropy_coef=0.01), plan, NonFiniteGuard(), temperature=0.7)
    ops = LocalOps()
    if sp is not None:
        enable_ulysses(model, sp.size)
        ops.sequence_parallel = sp  # what StrategyOps reads from LongActFSDP
    ro = _rollouts(model.config.vocab_size)
    rows = torch.arange(4)
    logp, ent = learner.logprobs_of(model, ro, rows, ops, count_prompts=torch.ones(4, dtype=torch.bool))
    assert ent.requires_grad
    comp = ro.completion_mask.float()  # [N, C]
    loss = (logp * torch.linspace(-1.0, 2.0, 4)[:, None] * comp).sum()
    (loss - (ent * torch.linspace(0.5, -1.5, 4)[:, None] * comp).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if sp is not None:  # the sum of the ranks' partial gradients (FSDP2's reduce-scatter)
        for g in grads.values():
            dist.all_reduce(g)
    return logp.detach() * comp, ent.detach() * comp, grads


@dataclass
class _Box:
    tensor: torch.Tensor
    texts: list[str]


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        sp = SPGroup.of(dist.group.WORLD)
        kernels.FlashVarlen = TorchVarlen  # flash-attn's part kernel -> the torch reference (CPU)
        built: list[tuple[str, PackedCompletions]] = []  # the layouts the ranks built their kernels from
        real_call = kernels.kernel_call
        kernels.kernel_call = lambda kernel, layout, part=None: (
            built.append((kernel, layout)) or real_call(kernel, layout, part)
        )
        results = [_parallel(case, sp) for case in CASES]
        flex = [(_packed_forward(c, sp, "flex"), _packed_forward(c, sp, "sdpa_mask")) for c in FLEX_CASES]
        mine = _Box(torch.full((2,), float(rank)), [f"rank {rank}"])
        shared = from_first_rank(mine, sp, "cpu")  # what DistOps.share does with a round of rollouts
        empty = _only_dummies(sp)
        learner = _through_learner(sp)
        if rank == 1:  # the other rank's results are equal by construction (summed over the group)
            saved = {"results": results, "shared": (shared.tensor, shared.texts), "empty": empty}
            saved |= {"flex": flex, "built": built}
            torch.save({**saved, "learner": learner}, out)
    finally:
        close_process_group()  # settles gloo threads: no abort at exit


@pytest.fixture(scope="module")
def parallel_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp / "rank1.pt")), nprocs=WORLD, join=True)
    return torch.load(tmp / "rank1.pt", weights_only=False)


@pytest.mark.slow
def test_from_first_rank_gives_every_rank_the_first_ranks_value(parallel_results):
    tensor, texts = parallel_results["shared"]  # rank 1's, after the broadcast
    assert torch.equal(tensor, torch.zeros(2)) and texts == ["rank 0"]


@pytest.mark.slow
def test_the_learner_takes_the_group_from_its_collectives_with_the_entropy_bonus(parallel_results):
    """``Learner.logprobs_of`` under the collectives' group equals one process: log-probs, entropy, and every
    gradient of a loss with an entropy bonus (the path that once crashed under sequence parallelism)."""
    torch.set_num_threads(1)
    _assert_same(parallel_results["learner"], _through_learner(None))


@pytest.mark.slow
def test_lock_step_dummies_alone_run_and_return_no_rows(parallel_results):
    assert parallel_results["empty"].shape == (0, 5)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)), ids=["-".join(map(str, c)) for c in CASES])
def test_two_ranks_equal_one_process(parallel_results, index):
    torch.set_num_threads(1)
    got, want = parallel_results["results"][index], _single(CASES[index])
    _assert_same(got[:3], want[:3])  # log-probs, entropy, every gradient
    # LongAct statistics: each rank counts the tokens it holds; summed, every real token counts once
    assert got[3].keys() == want[3].keys() and len(want[3]) == 2 * 2 * 2  # (proj, post_rope) x 2 layers x q/k
    for key, (sum_abs, max_abs, count) in want[3].items():
        assert got[3][key][2] == count > 0, key
        torch.testing.assert_close(got[3][key][0], sum_abs, rtol=1e-5, atol=1e-5, msg=str(key))
        torch.testing.assert_close(got[3][key][1], max_abs, rtol=1e-5, atol=1e-6, msg=str(key))


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(FLEX_CASES)), ids=["-".join(map(str, c)) for c in FLEX_CASES])
def test_two_ranks_on_flex_equal_the_dense_mask_and_one_process(parallel_results, index):
    """FlexAttention's forward on the head-split tensors (GQA: 2 query heads on 1 KV head per rank, and the
    repeated single KV head) equals the dense-mask pass on the same ranks and the single process."""
    torch.set_num_threads(1)
    (flex_logp, flex_ent), (dense_logp, dense_ent) = parallel_results["flex"][index]
    one_logp, one_ent = _packed_forward(FLEX_CASES[index])
    assert flex_logp.abs().sum() > 0
    torch.testing.assert_close(flex_logp, dense_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex_ent, dense_ent, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(flex_logp, one_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex_ent, one_ent, atol=1e-4, rtol=1e-5)


@functools.cache
def _sdpa_model():
    model = tiny_llama(seed=0).model
    model.config._attn_implementation = "sdpa"
    return model


def _dense(layout: PackedCompletions) -> torch.Tensor:
    """``[T, sum(P_s) + T]`` bool: the mask the dense-mask pass gives SDPA (a tiny sdpa model's builder)."""
    return layout.attention_mask(_sdpa_model(), torch.float32)[0, 0]


def _assert_kernels_equal_the_dense_mask(layout: PackedCompletions, block: int) -> None:
    """The block mask (tiles, then the mask function inside partial tiles) and the varlen plan's pairs equal
    the dense mask element by element."""
    from torch.nn.attention.flex_attention import create_mask

    from longact_pl.ops.flex_block_mask import block_layout, packed_block_mask

    want = _dense(layout)  # [T, K]
    t, k = want.shape
    any_, full = block_layout(layout, block)
    mask = packed_block_mask(layout, block)
    tiles = (any_ & ~full).repeat_interleave(block, 0).repeat_interleave(block, 1)[:t, :k]
    fulls = full.repeat_interleave(block, 0).repeat_interleave(block, 1)[:t, :k]
    assert torch.equal(fulls | (tiles & create_mask(mask.mask_mod, 1, 1, t, k, "cpu")[0, 0]), want)
    assert torch.equal(VarlenPlan.from_layout(layout).dense_mask(), want)


@pytest.mark.slow
def test_the_layouts_the_ranks_built_their_kernels_from_equal_the_dense_mask(parallel_results):
    built = parallel_results["built"]
    # one layout per packed pass (a checkpoint replay reuses its pass's kernel): 2 varlen cases, 2 flex ones
    assert [k for k, _ in built] == ["flash_varlen"] * 2 + ["flex"] * 2
    padded = 0
    for _, layout in built:
        assert layout.num_tokens % WORLD == 0  # the split's padding row makes it a multiple of N
        padded += int(layout.cu_seqlens[-1] - layout.cu_seqlens[-2]) == 1  # 1 token: the padding row
        for block in (8, 128):
            _assert_kernels_equal_the_dense_mask(layout, block)
    assert padded == 2  # the odd cases' layouts carry the padding row


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_split_layouts_kernels_equal_the_dense_mask_and_keep_real_tokens_apart(name, size):
    """The sequence-parallel split pads the packed row to a multiple of N with a row of its own on the last
    span: the kernels' masks still equal the dense mask, and no real token attends to the padding."""
    layout = _layout(*LAYOUTS[name])
    split = sp_logprobs._split_layout(layout, size)
    t, p = layout.num_tokens, layout.num_prompt_keys
    assert split.num_tokens % size == 0 and split.num_tokens - t < size
    dense = _dense(split)
    assert torch.equal(dense[:t, : p + t], _dense(layout)) and not dense[:t, p + t :].any()
    _assert_kernels_equal_the_dense_mask(split, 8)


# CUDA: Qwen3 with 1 KV head (repeated to one per rank), checkpointing, a lock-step dummy, the padding row
GPU_CASE = Case("qwen3", 1, "sdpa", True, True, None, 13, 7, pack=True, pad_spans=1, odd=True)


def _bf16_packed(case: Case, sp: SPGroup | None, kernel: str, device: str = "cuda"):
    """Under bf16 autocast: masked log-probs, every parameter gradient of a weighted loss (summed over the
    ranks) and the completion mask. 2 ranks: the packed pass on the plan's kernel for ``device``; one
    process: the padded SDPA pass."""
    model = _model(case).to(device)
    ids, mask = (
        t.to(device) for t in _batch(model.config.vocab_size, case.prompt, case.completion, case.odd)
    )
    width = case.completion
    if sp is None:
        run = functools.partial(grouped_completion_logprobs, model, ids, mask, width, G, 0.7, pack=False)
    else:
        plan = LogprobPass.for_model(model, True, None, True).plan.on_device(device)  # as configure_model
        assert plan.packed_kernel == ("flex" if device == "cuda" else "sdpa_mask")
        # flash_varlen: what the plan picks for flash_attention_2 with flash-attn installed
        lp = LogprobPass(dataclasses.replace(plan, packed_kernel=kernel))
        enable_ulysses(model, sp.size)
        run = functools.partial(
            lp, model, LogprobCall(ids, mask, width, 0.7, pad_spans=case.pad_spans), sp=sp
        )
    with torch.autocast(device, dtype=torch.bfloat16):
        logp, _ = run()
    comp = mask[:, -width:].float()
    (logp * torch.linspace(-1.0, 2.0, ids.shape[0], device=device)[:, None] * comp).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if sp is not None:
        for g in grads.values():
            dist.all_reduce(g)
    return (logp.detach() * comp).cpu(), {n: g.cpu() for n, g in grads.items()}, comp.bool().cpu()


def _gpu_worker(rank: int, init_file: str, out: str, kernel: str) -> None:
    # both ranks on one GPU: gloo carries CUDA tensors (NCCL refuses two ranks on one device)
    torch.cuda.set_device(0)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        got = _bf16_packed(GPU_CASE, SPGroup.of(dist.group.WORLD), kernel)
        if rank == 1:
            torch.save(got, out)
    finally:
        close_process_group()  # settles gloo threads: no abort at exit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kernel", ["flex", "flash_varlen"])
def test_two_ranks_packed_kernels_match_the_padded_path_in_bf16_on_cuda(kernel, tmp_path):
    """bf16 forward + backward: the sequence-parallel packed pass on the plan's CUDA kernel (compiled
    FlexAttention, or flash-attn varlen) against the single-process padded SDPA pass."""
    if kernel == "flash_varlen" and not kernels.flash_attn_available():
        pytest.skip("flash-attn is not installed")
    args = (str(tmp_path / "init"), str(tmp_path / "rank1.pt"), kernel)
    mp.spawn(_gpu_worker, args=args, nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "rank1.pt", weights_only=False)
    want = _bf16_packed(GPU_CASE, None, kernel)
    comp = want[2]
    assert torch.equal(got[2], comp)
    assert torch.isfinite(got[0]).all() and got[0][comp].abs().min() > 0
    torch.testing.assert_close(got[0][comp], want[0][comp], atol=5e-2, rtol=5e-2)
    assert got[1].keys() == want[1].keys() and len(want[1]) > 0
    for name, g in want[1].items():
        scale = g.abs().max().clamp(min=1e-8)
        torch.testing.assert_close(got[1][name] / scale, g / scale, atol=5e-2, rtol=0, msg=name)


def test_the_packed_pass_takes_the_plans_kernel_and_refuses_one_it_cannot_dispatch():
    """The dense mask for sdpa_mask on sdpa/eager; a kernel call (and only a placeholder mask) otherwise;
    eager attention has no dispatched function, so a forced kernel is refused naming the field."""
    model, sp = tiny_llama(seed=0).model, SPGroup(None, 1, 0)
    layout = _layout(*LAYOUTS["one_group"])
    prefix = KVRecord(keep=layout.num_prompt_keys)
    model.config._attn_implementation = "sdpa"
    dense = sp_logprobs._packed_attention(model, sp, layout, prefix, "sdpa_mask")
    assert dense.kernel is None and torch.equal(dense.mask[0, 0], _dense(layout))
    assert sp_logprobs._packed_attention(model, sp, layout, prefix, None).kernel is None  # CPU: chosen dense
    flex = sp_logprobs._packed_attention(model, sp, layout, prefix, "flex")
    assert flex.kernel.kernel == "flex" and flex.mask.numel() == 0 and flex.prefix is prefix
    model.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="model.attn_implementation='eager' runs the packed pass only on"):
        sp_logprobs._packed_attention(model, sp, layout, prefix, "flex")


def test_kv_repeats_and_head_errors():
    assert kv_repeats(32, 8, 4) == 1 and kv_repeats(32, 8, 16) == 2 and kv_repeats(4, 1, 2) == 2
    with pytest.raises(ValueError, match=r"sequence_parallel_size=3 must divide .* heads \(4\)"):
        kv_repeats(4, 2, 3)
    with pytest.raises(ValueError, match="sequence_parallel_size=4 and num_key_value_heads=6"):
        kv_repeats(24, 6, 4)
