"""Attention work of the packed completion pass per kernel: query-key pairs computed vs the real ones.

The packed pass (``module.logprobs.pack_completions``) attends ``T`` packed completion tokens to every span's
prompt and to themselves; a token's real pairs are its own prompt and its own row up to itself. What each
kernel computes, from the layout alone (:mod:`longact_pl.ops.attention_kernels`):

* ``sdpa_mask`` (b, the dense 4-D mask; the CPU path): the whole ``T x (sum(P_s) + T)`` rectangle;
* ``flex``: ``128 x 128`` tiles holding a real pair (the ``BlockMask`` the pass builds);
* ``flash_varlen``: exactly the real pairs (two varlen calls; tile padding inside the kernel not counted).

Layouts: P = 8k and 32k-token prompts, G = 8 completions of long-tailed lengths (one at the 4k budget,
median ~512) in one group, and the same with two groups sharing the micro-batch. Goal: computed pairs within
1.2x of the real ones on the CUDA path (``flex``).

Measured on this CPU (the only device here; says nothing about CUDA kernels): building the block mask
from the layout at each size, and one forward of each kernel on a small case (SDPA on the dense mask, eager
FlexAttention, which on CPU materialises the scores, and the torch reference of the varlen merge).

    python scripts/bench/bench_attention.py            # P = 8k, 32k
    python scripts/bench/bench_attention.py --quick    # the same (analytic: seconds)

Prints ``attn_pairs_<case>_<kernel> ratio=<dense/kernel> a=<kernel pairs> b=<dense pairs>`` and a comment
with each kernel's computed / real pairs.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import figure, interleaved_times, set_threads
from bench_packing import lengths_long_tailed
from torch.nn.attention.flex_attention import create_mask, flex_attention

from longact_pl.ops.flex_block_mask import BLOCK, block_work, packed_block_mask, real_pairs
from longact_pl.ops.packed import PackedCompletions
from longact_pl.ops.varlen_attention import TorchVarlen, VarlenPlan, varlen_attention

GOAL = 1.2  # computed pairs / real pairs on the CUDA path


def layout(prompts: list[int], lengths: list[list[int]]) -> PackedCompletions:
    """Packed layout of groups (``prompts[s]`` tokens each) with the given completion lengths."""
    flat = [n for group in lengths for n in group]
    mask = (torch.arange(max(flat))[None] < torch.tensor(flat)[:, None]).long()  # [R, C]
    row_span = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor([len(g) for g in lengths]))
    return PackedCompletions.build(torch.zeros_like(mask), mask, row_span, torch.tensor(prompts))


def work(name: str, lay: PackedCompletions) -> None:
    """Figure lines of one layout: pairs computed by each kernel against the dense rectangle."""
    real = real_pairs(lay)
    dense = lay.num_tokens * (lay.num_prompt_keys + lay.num_tokens)
    flex = block_work(lay, BLOCK)
    built = []
    for _ in range(3):  # the BlockMask the pass builds, from the layout (best of 3: a shared machine)
        start = time.perf_counter()
        packed_block_mask(lay, BLOCK)
        built.append(time.perf_counter() - start)
    keys = lay.num_prompt_keys + lay.num_tokens
    verdict = "met" if flex <= GOAL * real else "MISSED"
    print(
        f"# {name}: T={lay.num_tokens} packed tokens, K={keys} keys; computed / real pairs: sdpa_mask "
        f"{dense / real:.2f}x, flex {flex / real:.3f}x (goal <= {GOAL}x: {verdict}), flash_varlen 1.00x; "
        f"BlockMask built in {min(built) * 1e3:.1f} ms on this CPU; the dense bool mask is "
        f"{dense / 2**20:.0f} MiB"
    )
    figure(f"attn_pairs_{name}_flex", dense / flex, flex, dense)
    figure(f"attn_pairs_{name}_flash_varlen", dense / real, real, dense)


def mask_bytes(mask) -> int:
    """Bytes a ``BlockMask`` holds: its tile tensors and the index tensors its mask function closes over."""
    tensors = [t for t in vars(mask).values() if isinstance(t, torch.Tensor)]
    cells = mask.mask_mod.__closure__ or ()
    tensors += [c.cell_contents for c in cells if isinstance(c.cell_contents, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def sequence_parallel_mask(prompt: int, group: int, completion: int, ranks: int) -> None:
    """Mask memory per rank of the sequence-parallel packed pass: the dense bool mask every rank built
    (``sdpa_mask``, the CPU path) against the ``BlockMask`` the CUDA path builds (each rank holds every
    position of its heads after the all-to-all, so each builds the whole layout's mask)."""
    lay = layout([prompt], [[completion] * group])
    t = lay.num_tokens + (-lay.num_tokens % ranks)  # the split's padding row
    dense = t * (prompt + t)  # bool [T, P + T]
    start = time.perf_counter()
    block = mask_bytes(packed_block_mask(lay, BLOCK))
    took = time.perf_counter() - start
    print(
        f"# sequence parallel N={ranks}, P={prompt}, G={group} x {completion}: mask per rank, dense bool "
        f"{dense / 2**30:.2f} GiB (float copy: 4x) vs BlockMask {block / 2**20:.1f} MiB "
        f"(built in {took:.2f} s on this CPU)"
    )
    figure(f"attn_sp_mask_bytes_P{prompt // 1024}k", dense / block, block, dense)


def timed_small(threads: int) -> None:
    """CPU forward time of each kernel on a small case (P=512, G=8, budget 256, GQA 8/2 heads, d=64)."""
    set_threads(threads)
    lay = layout([512], [lengths_long_tailed(8, 256)])
    gen = torch.Generator().manual_seed(0)
    k_len = lay.num_prompt_keys + lay.num_tokens
    q = torch.randn(1, 8, lay.num_tokens, 64, generator=gen)  # [1, h, T, d]
    k, v = (torch.randn(1, 2, k_len, 64, generator=gen) for _ in range(2))  # [1, h_kv, K, d]
    dense = create_mask(lay.mask_function(), 1, 1, lay.num_tokens, k_len, "cpu")  # [1, 1, T, K]
    block_mask, plan = packed_block_mask(lay), VarlenPlan.from_layout(lay)
    arms = {
        "sdpa_mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True),
        "flex": lambda: flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True),
        "varlen_ref": lambda: varlen_attention(q, k, v, plan, TorchVarlen(), 0.125),
    }
    with torch.no_grad():
        times = interleaved_times(arms, reps=5)
    print(
        "# CPU forward, small case (eager flex materialises the scores on CPU; the varlen arm is the torch "
        "reference, segment by segment): " + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in times.items())
    )
    figure(
        "attn_cpu_forward_small_flex", times["sdpa_mask"] / times["flex"], times["flex"], times["sdpa_mask"]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the same sizes (the work figures are analytic)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    group = lengths_long_tailed(8, 4096)
    print(f"# completion lengths (G=8, budget 4096): {group}")
    for prompt in (8192, 32768):
        tag = f"P{prompt // 1024}k"
        work(f"{tag}_G8", layout([prompt], [group]))
        work(f"{tag}_2x_G8", layout([prompt, prompt - 100], [group, group[::-1]]))
    sequence_parallel_mask(65536, 8, 4096, 2)
    timed_small(args.threads)


if __name__ == "__main__":
    main()
