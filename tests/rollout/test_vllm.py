"""vLLM rollouts: layout and weight-sync bookkeeping (always), and a real engine on SmolLM2 (marked vllm).

The real-engine tests share one engine per session (start ~20-60 s on 2 cores). Tolerance: the engine runs
SmolLM2 in bf16, the HF reference in fp32, so greedy paths may part after a near-tie; they are compared
token by token under teacher forcing, and log-probs within 0.1 nats on average (0.5 at most).
"""

import copy
import csv
import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.ops.positions import position_ids_from_mask
from longact_pl.rollout.batch_builder import eos_token_ids
from longact_pl.rollout.hf import HFRollout
from longact_pl.rollout.tp_share import Sample
from longact_pl.rollout.vllm import VLLMRollout, prompt_seed
from longact_pl.rollout.weight_sync import WeightSync
from longact_pl.train import rollout_callbacks
from tests.conftest import chat_ids

HAS_VLLM = importlib.util.find_spec("vllm") is not None
MEAN_TOL, MAX_TOL = 0.1, 0.5


def vllm_engine(fn):
    """Mark a test that runs a real vLLM engine (skipped where vLLM is not installed)."""
    skip = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (make install-vllm)")
    return pytest.mark.vllm(pytest.mark.slow(skip(fn)))


# ----------------------------------------------------------------------------- no engine needed
def _sample(tokens, logps):
    return Sample(tuple(tokens), tuple(logps))


def test_batch_layout_from_engine_outputs(tiny):
    tok = tiny.tokenizer
    eos = eos_token_ids(tiny.model, tok)[0]
    prompts = [[5, 6, 7], [8, 9]]
    samples = [_sample([11, eos], [-1.0, -2.0]), _sample([12, 13, 14], [-0.5, -0.25, -0.125]),
               _sample([eos], [-3.0]), _sample([15, 16], [-1.5, -0.75])]  # fmt: skip
    ro = VLLMRollout.to_batch(prompts, samples, 2, tok, [eos])
    assert ro.input_ids.shape == (4, 3 + 3) and ro.prompt_width == 3 and ro.group_size == 2
    assert ro.attention_mask[2:, 0].sum() == 0  # the shorter prompt is left-padded
    assert ro.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]  # up to and incl. EOS
    assert torch.equal(ro.attention_mask[:, 3:], ro.completion_mask)
    torch.testing.assert_close(ro.behaviour_logp[1], torch.tensor([-0.5, -0.25, -0.125]))
    assert ro.behaviour_logp[0, 2] == 0 and ro.input_ids[0, 5] == tok.pad_token_id


def test_prompt_seed_depends_on_tokens_not_position():
    assert prompt_seed(3, [1, 2, 3]) == prompt_seed(3, [1, 2, 3])
    assert len({prompt_seed(3, [1, 2, 3]), prompt_seed(4, [1, 2, 3]), prompt_seed(3, [1, 2, 4])}) == 3


@pytest.mark.parametrize(
    "field,value",
    [("group_size", 1), ("temperature", 0.0), ("top_k", -1), ("dtype", "fp8"), ("weight_sync", "nccl"),
     ("bucket_mb", 0), ("sleep_level", 3)],
)  # fmt: skip
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"rollout.{field}"):
        VLLMRollout(**{field: value})


def test_weight_sync_marks_stale_after_each_optimizer_step():
    engine = VLLMRollout()
    engine._stale = False
    (callback,) = rollout_callbacks(engine)
    assert isinstance(callback, WeightSync) and rollout_callbacks(HFRollout()) == []
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=0.1)
    callback.on_train_start(SimpleNamespace(optimizers=[opt]), None)
    assert not engine._stale
    param.grad = torch.ones(2)
    opt.step()
    assert engine._stale
    callback.teardown(None, None, "fit")
    engine._stale = False
    opt.step()
    assert not engine._stale  # hooks removed


class _FakeLLM:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def sleep(self, level: int) -> None:
        self.calls.append(f"sleep{level}")

    def wake_up(self) -> None:
        self.calls.append("wake")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_engine_sleeps_between_rollouts_only_when_asked(level):
    from longact_pl.rollout.vllm_engine import Engine

    llm = _FakeLLM()
    engine = Engine(llm=llm, folder=None, sleep_level=level, owner=7)
    engine.wake()  # awake already: nothing to do
    engine.sleep()
    engine.sleep()  # asleep already
    engine.wake()
    assert llm.calls == ([] if level == 0 else [f"sleep{level}", "wake"])
    # level 2 drops the weights: the next rollout must push them again
    assert engine.owner == (None if level == 2 else 7)


@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (make install-vllm)")
def test_sleep_is_gated_by_the_device():
    """vLLM sleeps on CUDA/ROCm/XPU only; on this CPU an engine asked to sleep starts without sleep mode."""
    from longact_pl.rollout.vllm_engine import sleep_supported

    assert sleep_supported() == torch.cuda.is_available()


# ----------------------------------------------------------------------------- real engine (vLLM)
@pytest.fixture(scope="module")
def smollm2():
    from longact_pl.models.smollm2 import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
    from longact_pl.rollout.vllm_engine import shutdown_engines

    # the conf/rollout/vllm.yaml engine settings, with 16 MiB buckets: every push of SmolLM2 (bf16, 270 MB)
    # takes 5 buckets of a 54 MiB segment (its embedding, the largest tensor)
    yield VLLMRollout(group_size=3, max_new_tokens=16, bucket_mb=16)
    shutdown_engines()


def _prompts(tok):
    return [chat_ids(tok, t) for t in ("What is 2+2? Answer briefly.", "Name a colour.", "Say hello.")]


def _teacher_forced(policy, ro, temperature):
    logp, _ = completion_logprobs(
        policy, ro.input_ids, ro.attention_mask, ro.completion_mask.shape[1], temperature
    )
    return logp * ro.completion_mask  # [N, C]


def _close(a, b, mask):
    diff = (a - b).abs()[mask.bool()]
    assert diff.mean() < MEAN_TOL and diff.max() < MAX_TOL, (diff.mean(), diff.max())


@vllm_engine
def test_greedy_matches_hf(engine, smollm2):
    policy, tok = smollm2.model, smollm2.tokenizer
    prompts = _prompts(tok)
    ro = engine.generate(policy, tok, prompts, greedy=True)
    hf = HFRollout(max_new_tokens=16).generate(policy, tok, prompts, greedy=True)
    assert ro.input_ids.shape[0] == 3 and engine.syncs == 1 and engine.last_sync_s > 0
    mine = [r[m.bool()].tolist() for r, m in zip(ro.input_ids[:, ro.prompt_width :], ro.completion_mask)]
    ref = [r[m.bool()].tolist() for r, m in zip(hf.input_ids[:, hf.prompt_width :], hf.completion_mask)]
    assert any(a == b for a, b in zip(mine, ref))  # paths part only after a near-tie
    # teacher-forced on vLLM's tokens: the fp32 model's log-probs match the engine's, and wherever the fp32
    # model has a clear favourite (top-2 margin > 0.5 nats, beyond bf16 noise) the engine picked it
    _close(_teacher_forced(policy, ro, 1.0), ro.behaviour_logp, ro.completion_mask)
    with torch.no_grad():
        pos = position_ids_from_mask(ro.attention_mask)  # [N, P + C]
        logits = policy(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=pos).logits
    top = logits[:, ro.prompt_width - 1 : -1].float().log_softmax(-1).topk(2, -1)  # [N, C, 2]
    picked = top.indices[..., 0] == ro.input_ids[:, ro.prompt_width :]  # [N, C]
    clear = ro.completion_mask.bool() & (top.values[..., 0] - top.values[..., 1] > 0.5)  # [N, C]
    assert clear.sum() > 5 and picked[clear].all()
    assert picked[ro.completion_mask.bool()].float().mean() > 0.85


@vllm_engine
def test_sampling_layout_seed_and_temperature_logprobs(engine, smollm2):
    policy, tok = smollm2.model, smollm2.tokenizer
    prompts = _prompts(tok)[:2]
    a = engine.generate(policy, tok, prompts, seed=5)
    b = engine.generate(policy, tok, prompts, seed=5)
    c = engine.generate(policy, tok, prompts, seed=6)
    assert a.input_ids.shape[0] == 6 and a.group_size == 3 and len(a.completions) == 6
    assert torch.equal(a.input_ids[0, : a.prompt_width], a.input_ids[2, : a.prompt_width])
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    eos = eos_token_ids(policy, tok)
    for row, mask in zip(a.input_ids[:, a.prompt_width :], a.completion_mask):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        assert n == 16 or int(row[n - 1]) in eos  # ends at EOS or at the budget
    # the engine's log-probs are at the sampling temperature, like the trainer's
    _close(_teacher_forced(policy, a, engine.temperature), a.behaviour_logp, a.completion_mask)
    assert engine.syncs == 1  # no optimizer step, no push


@vllm_engine
def test_weights_pushed_after_a_training_step(engine, smollm2):
    policy, tok = copy.deepcopy(smollm2.model), smollm2.tokenizer
    prompt = [_prompts(tok)[1]]
    before = engine.generate(policy, tok, prompt, greedy=True)
    target = tok.encode("Purple elephants dance tonight.", add_special_tokens=False) + [tok.eos_token_id]
    ids = torch.tensor([prompt[0] + target])  # [1, P + T]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for _ in range(3):  # big steps: the greedy answer visibly changes
        logits = policy(input_ids=ids).logits[0, len(prompt[0]) - 1 : -1]  # [T, V]
        torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target)).backward()
        opt.step()
        opt.zero_grad()
    stale = engine.generate(policy, tok, prompt, greedy=True)
    assert torch.equal(stale.input_ids, before.input_ids)  # not marked stale: still the old weights
    engine.mark_stale()
    after = engine.generate(policy, tok, prompt, greedy=True)
    assert engine.last_push.buckets == 5 and engine.last_push.tensors == 272  # streamed, no file
    hf = HFRollout(max_new_tokens=16).generate(policy, tok, prompt, greedy=True)
    assert after.completions != before.completions
    assert after.completions == hf.completions and "Purple" in after.completions[0]
    _close(_teacher_forced(policy, after, 1.0), after.behaviour_logp, after.completion_mask)


@vllm_engine
def test_k3_mismatch_with_identical_weights_is_at_the_bf16_floor(engine, smollm2):
    """Sampler (vLLM, bf16) and trainer (fp32, same weights) describe the same distribution.

    Measured on this CPU (12 completions, ~270 tokens, T = 0.7): k3 KL(sampler || trainer) = 1.4e-3, mean
    |log r| = 0.034, max 0.26. That is the floor of a bf16 engine: a bf16 weight or activation carries a
    relative error of ~2^-9, so per-token log-probs differ by a few 1e-2 and k3 ~ E[(log r)^2] / 2 ~ 1e-3.
    The same check with an fp32 engine measured k3 ~ 0 (mean |log r| 7e-6, max 4e-5): the temperature and the
    (untruncated) softmax agree exactly, only bf16 rounding is left. A trainer at the wrong temperature
    (1.0) measures k3 = 0.13, far above the 5e-3 threshold.
    """
    from longact_pl.algos.correction import RolloutCorrection

    policy, tok = smollm2.model, smollm2.tokenizer
    engine.mark_stale()  # an earlier test may have left another model's weights in the engine
    ro = engine.generate(policy, tok, _prompts(tok), seed=3)
    metrics = RolloutCorrection().metrics(
        _teacher_forced(policy, ro, engine.temperature), ro.behaviour_logp, ro.completion_mask
    )
    assert float(metrics["k3_kl"]) < 5e-3 and float(metrics["log_ratio_abs_mean"]) < 0.1, metrics
    wrong_temperature = RolloutCorrection().metrics(
        _teacher_forced(policy, ro, 1.0), ro.behaviour_logp, ro.completion_mask
    )
    assert float(wrong_temperature["k3_kl"]) > 0.05


def _peak_extra_bytes(fn) -> int:
    """Peak increase of this process's resident memory (anonymous + shared pages) while ``fn`` runs."""
    import threading
    import time

    def resident() -> int:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return sum(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssShmem"))

    base, peak, done = resident(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.002)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], resident()) - base


@vllm_engine
def test_push_peak_extra_memory_is_about_one_bucket(engine, smollm2):
    """The trainer holds one bucket during a push, not the model: no cast copy, no file, no state dict."""
    policy = smollm2.model
    small = _peak_extra_bytes(lambda: engine.sync(policy))
    model_bytes, segment = engine.last_push.bytes, engine.last_push.segment_bytes  # 270 MB; 54 MiB
    assert engine.last_push.buckets == 5 and segment < model_bytes / 4
    assert small < segment + 16 * 2**20, (small, segment)
    # the same measurement sees a whole-model bucket: one 1 GiB bucket holds all 270 MB at once
    whole = VLLMRollout(group_size=3, max_new_tokens=16, bucket_mb=1024)  # shares the engine
    assert _peak_extra_bytes(lambda: whole.sync(policy)) > 0.9 * model_bytes
    engine.mark_stale()  # the engine now holds `whole`'s push; the next test's rollout pushes again


@vllm_engine
def test_grpo_run_with_vllm_rollouts(tmp_path, engine, smollm2):
    from longact_pl.train import run
    from tests.helpers import NO_CKPT, compose_train

    cfg = compose_train(
        tmp_path, "model=smollm2_135m", "rollout=vllm", "correction=token_tis", "algo.kl_coef=0",
        "data.reward._target_=tests.helpers.ParityReward", "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "data.batch_size=1", "rollout.group_size=2", "rollout.max_new_tokens=8", "data.train.lengths=[256]",
        "data.val.lengths=[256]", "data.val.num_samples=1", "module.optimizer.lr=1e-5",
        "trainer.precision=bf16-mixed",
        NO_CKPT,
    )  # fmt: skip
    metrics = run(cfg, tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    assert len(rows) == 2 and "val/acc" in metrics
    # one push before the first rollout, one after the first optimizer step
    assert [float(r["rollout/syncs"]) for r in rows] == [1.0, 2.0]
    assert all(float(r["rollout/sync_s"]) > 0 for r in rows)
    # the mismatch is measured every step (at the bf16 floor: see test_k3_mismatch_...) and corrected
    assert all(float(r["train/correction/k3_kl"]) < 5e-3 for r in rows)
    assert all(
        float(r["train/correction/k3_kl/len_le256"]) == float(r["train/correction/k3_kl"]) for r in rows
    )
    assert all(0 <= float(r["train/correction/token_truncated_frac"]) < 0.5 for r in rows)
    assert (tmp_path / "final" / "model.safetensors").is_file()


@vllm_engine
def test_fsdp_ranks_push_gathered_weights_into_their_engines(tmp_path, monkeypatch):
    """2 CPU ranks under FSDP2, each with its own engine: the pushed (gathered) weights are the trainer's.

    A tiny Llama with head_dim 64 (vLLM's CPU attention has no kernel for 16). If an engine held other
    weights than the trainer (its random start, a stale or a half-gathered copy), the trainer/engine
    probability ratio of the sampled tokens would be far from 1.
    """
    from tests.distributed_helpers import train_cli

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm_cache"))
    train_cli(
        tmp_path, "model=tiny_llama", "model.hidden_size=256", "trainer.accelerator=cpu",
        "trainer.precision=32-true", "trainer.max_steps=2", "+trainer.limit_val_batches=0",
        "validate_before_training=false", "data.train.lengths=[256]", "data.batch_size=2",
        "data.reward._target_=tests.helpers.ParityReward", "rollout=vllm", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "correction=token_tis", "masking=saliency", "masking.calib_samples=2",
        "module.optimizer.lr=1e-3", "strategy=fsdp", "trainer.devices=2",
    )  # fmt: skip
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    assert [float(r["rollout/syncs"]) for r in rows] == [1.0, 2.0]
    assert all(float(r["train/correction/k3_kl"]) < 5e-3 for r in rows)  # a random engine: k3 >> 0.1
    assert (tmp_path / "final" / "mask.safetensors").is_file()
