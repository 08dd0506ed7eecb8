"""GPU check of ``rollout.sleep_level``: a colocated vLLM engine frees GPU memory between rollouts and samples
the same after waking up (level 1 keeps the weights in CPU memory, level 2 drops them and pushes them again).

Run by ``scripts/gpu_check.sh`` when a CUDA device and vLLM are present; on CPU, vLLM has no sleep mode and
the setting is ignored (nothing to check). Exits non-zero on a failed check.
"""

from __future__ import annotations

import sys

import torch

GIB = 2**30


def main() -> int:
    """Check levels 1 and 2 on the embedded SmolLM2; print one line per level."""
    from longact_pl.models.smollm2 import load_smollm2
    from longact_pl.rollout.vllm import VLLMRollout
    from longact_pl.rollout.vllm_engine import shutdown_engines

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    loaded = load_smollm2()
    policy, tok = loaded.model, loaded.tokenizer
    prompts = [tok.encode(t) for t in ("Name a colour.", "What is 2+2?")]
    failed = False
    for level in (1, 2):
        rollout = VLLMRollout(group_size=2, max_new_tokens=16, kv_cache_gib=4.0, sleep_level=level)
        first = rollout.generate(policy, tok, prompts, greedy=True)  # starts, pushes, samples, sleeps
        engine = rollout._engine(policy)
        free_asleep = torch.cuda.mem_get_info()[0]
        engine.wake()
        free_awake = torch.cuda.mem_get_info()[0]
        engine.sleep()
        again = rollout.generate(policy, tok, prompts, greedy=True)  # wakes (level 2: pushes again)
        released = (free_asleep - free_awake) / GIB
        same = first.completions == again.completions
        ok = engine.sleep_level == level and engine.asleep and released > 3.0 and same
        failed |= not ok
        print(
            f"{'PASS' if ok else 'FAIL'} level {level}: {released:.2f} GiB released while asleep, "
            f"same greedy completions after waking: {same}, pushes: {rollout.syncs}"
        )
        shutdown_engines()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
