"""GPU figure of asynchronous rollouts (issue 28): async (staleness 1) vs sync steps/s, small random model.

The same RL steps as ``scripts/bench/bench_async.py`` (whose functions run both arms: HF sampling of B
prompts x G completions with long-tailed, log-normal completion lengths, then the learner's step with token
TIS), on a random Qwen3 built from a config (no model or tokenizer file) on this device, after one untimed
warm-up step, with one torch CPU thread per Python thread (as the bench). The async arm's producer thread
samples batch k+1 with a copy of the policy while the trainer trains on batch k; on one GPU they share the
device, so the gain comes from overlapping the host side of decoding (kernel launches, sampling) with the
trainer's kernels. Printed:

* ``async_steps_per_s value=<async/sync>`` and ``async_model_expected value=...`` (the bench's token-count
  model: the gain if generation and training overlapped perfectly);
* ``result async-vs-sync PASS|FAIL planned=- measured=- settings=... detail``: PASS when both arms ran every
  step and no trained batch lagged more than the staleness (1) behind the policy; the ratio is reported,
  not judged (the 1.3x goal is the CPU bench's).

    python scripts/gpu_check_async.py          # CUDA: hidden 256, 4 layers, B=2 G=4 P=512, 6 steps per arm
    python scripts/gpu_check_async.py --dry    # CPU: hidden 64, 2 layers, P=32, 3 steps per arm
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))  # bench_async and its _common
from bench_async import TailedHF, run_async, run_sync, token_model  # noqa: E402

STALENESS = 1


class Tokens:
    """The tokenizer interface a rollout uses (pad/EOS ids, decoding to id strings): no tokenizer file."""

    pad_token_id, eos_token_id = 0, 1

    @staticmethod
    def batch_decode(rows, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(str(int(t)) for t in row if int(t) > 1) for row in rows]

    def __len__(self) -> int:
        return 1024


def small_policy(dry: bool, device: torch.device):
    """A random Qwen3 (fp32) on ``device``: hidden 256 x 4 layers, or the dry run's hidden 64 x 2."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hidden, layers, dim = (64, 2, 16) if dry else (256, 4, 64)
    config = Qwen3Config(
        vocab_size=1024, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=dim, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0, layer_types=None,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with device:
        return Qwen3ForCausalLM(config)


def async_figure(dry: bool, steps: int | None = None) -> bool:
    """Run both arms, print the figures and the summary row; ``True`` when it passed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core each for the producer and the trainer (two threads on two cores
    # contend for each other's intra-op pool: measured 0.14 s vs 1.7-3.1 s for the same 3 sync steps)
    try:
        return _both_arms(torch.device("cuda" if not dry else "cpu"), dry, steps)
    finally:
        torch.set_num_threads(threads)


def _both_arms(device: torch.device, dry: bool, steps: int | None) -> bool:
    """:func:`async_figure`'s work, with one torch thread."""
    steps = steps or (3 if dry else 6)
    prompt, cap, median = (32, 16, 6) if dry else (512, 128, 16)
    kwargs = dict(group_size=4, temperature=1.0, median=median, sigma=0.8, cap=cap)
    gen = torch.Generator().manual_seed(0)
    prompts = [
        [torch.randint(10, 1024, (prompt,), generator=gen).tolist() for _ in range(2)] for _ in range(steps)
    ]
    seeds = [1000 + k for k in range(steps)]
    start = small_policy(dry, device)
    tag = f"staleness{STALENESS},B2,G4,P{prompt},steps{steps}"
    try:  # one untimed synchronous step first: lazy initialisation (kernels, allocator) out of both arms
        run_sync(copy.deepcopy(start), Tokens(), TailedHF(**kwargs), prompts[:1], seeds[:1])
        sync_engine = TailedHF(**kwargs)
        wall_s, gen_s, train_s, gens, trains, cols, tokens = run_sync(
            copy.deepcopy(start), Tokens(), sync_engine, prompts, seeds
        )
        async_engine = TailedHF(mode="async", max_staleness=STALENESS, **kwargs)
        wall_a, gen_a, train_a, lags = run_async(copy.deepcopy(start), Tokens(), async_engine, prompts, seeds)
    except Exception as err:  # noqa: BLE001 - reported as the figure's FAIL with its cause
        detail = f"{type(err).__name__}: {err}".replace("\n", " ")[:200]
        print(f"result async-vs-sync FAIL planned=- measured=- settings={tag} {detail}", flush=True)
        return False
    ratio = wall_s / wall_a
    _, _, expected = token_model(gens, trains, cols, tokens)
    print(f"async_steps_per_s value={ratio:.4g}", flush=True)
    print(f"async_model_expected value={expected:.4g}", flush=True)
    for name, wall, g, t in (("sync", wall_s, gen_s, train_s), ("async", wall_a, gen_a, train_a)):
        print(f"# {name}: {steps / wall:.3f} steps/s, wall {wall:.1f} s, engine idle {1 - g / wall:.0%}, "
              f"trainer idle {1 - t / wall:.0%}", flush=True)  # fmt: skip
    ok = len(lags) == steps and max(lags) <= STALENESS
    detail = f"async/sync {ratio:.2f}x (token model {expected:.2f}x), lags {lags}"
    print(f"result async-vs-sync {'PASS' if ok else 'FAIL'} planned=- measured=- settings={tag} {detail}",
          flush=True)  # fmt: skip
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU, tiny model: checks the code path")
    p.add_argument("--steps", type=int, default=None, help="steps per arm (default 6; dry 3)")
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry for the CPU check of the code path")
    return 0 if async_figure(args.dry, args.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
