"""``rollout.placement=disaggregated`` with the HF engine in its own process (gloo push), on a tiny model.

Each engine process takes ~5-15 s to start on the shared 2-core machine (it imports torch and transformers);
the driver-level tests share one where they can.
"""

import copy
import csv
import os
import sys
import time
from collections import Counter

import pytest
import torch

from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.algos.correction import RolloutCorrection
from longact_pl.algos.correction_weights import TokenRatio
from longact_pl.distributed import LocalOps
from longact_pl.guards import NonFiniteGuard
from longact_pl.learner import Learner, OptimizerCalls
from longact_pl.ops.policy_logprobs import LogprobPass
from longact_pl.rollout.async_hook import step_seed
from longact_pl.rollout.async_loop import EngineFailure
from longact_pl.rollout.async_remote import RemoteRollouts
from longact_pl.rollout.hf import HFRollout
from longact_pl.rollout.producers import make_rollouts
from longact_pl.train import run
from tests.helpers import compose_train

STEPS, B, G, NEW = 3, 2, 2, 6
ASYNC = ["rollout.mode=async", "correction=token_tis", "trainer.val_check_interval=100", "data.val=null",
         "rollout.placement=disaggregated"]  # fmt: skip


def _engine(cls=HFRollout, **kwargs) -> HFRollout:
    return cls(
        group_size=G, max_new_tokens=NEW, temperature=1.0, mode="async", placement="disaggregated", **kwargs
    )


def _prompts(step: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randint(3, vocab, (5 + i,), generator=gen).tolist() for i in range(B)]


def _rewards(batch) -> torch.Tensor:
    ids = batch.input_ids[:, batch.prompt_width :] * batch.completion_mask  # [N, C]
    return (ids.sum(-1) % 2).float()  # [N] mixed rewards: the groups have advantages


def _descendants(pid: int) -> set[int]:
    """Processes whose session is ``pid``'s (the engine process starts its own: vLLM workers included)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) == pid and fields[0] != "Z":  # session id; zombies are gone once reaped
                found.add(int(entry))
    return found


class _Trainer:
    """A learner with a real optimizer (SGD), as ``test_async_loop`` trains."""

    def __init__(self, policy, engine):
        self.policy = policy
        passes = LogprobPass.for_model(policy, shared_prefix=True, chunk_size=None)
        self.learner = Learner(
            GroupPolicyGradient(kl_coef=0.0), passes, NonFiniteGuard(3), engine.temperature,
            correction=RolloutCorrection(level=TokenRatio(), high=2.0), external=True,
        )  # fmt: skip
        self.opt = torch.optim.SGD(policy.parameters(), lr=0.5)

    def step(self, batch, index):
        calls = OptimizerCalls(
            backward=lambda loss: loss.backward(), step=self.opt.step,
            zero_grad=lambda: self.opt.zero_grad(set_to_none=True), skip=lambda: None,
        )  # fmt: skip
        train = self.learner.prepare(self.policy, None, batch, _rewards(batch))
        self.learner.update(self.policy, train, calls, LocalOps(), torch.Generator().manual_seed(index))


@pytest.fixture(scope="module")
def remote():
    from longact_pl.models.tiny import tiny_llama

    tiny = tiny_llama(seed=0)
    engine = _engine(max_staleness=1)
    rollouts = RemoteRollouts(engine, tiny.tokenizer, tiny.model, engine.schedule, keep_received=True)
    yield tiny, engine, rollouts
    rollouts.close()


def test_pushed_weights_arrive_bit_exact_and_tied(remote):
    tiny, _, rollouts = remote
    rollouts.take(0, _prompts(0, len(tiny.tokenizer)), 1)  # a step's batch, then its weights
    with torch.no_grad():
        for p in tiny.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)  # not representable in bf16: a cast would show
    version = rollouts.publish(tiny.model)
    got_version, state = rollouts.engine_state()
    assert got_version == version
    want = tiny.model.state_dict()
    assert state.keys() == want.keys()
    for name, t in want.items():
        assert state[name].dtype == t.dtype and torch.equal(state[name], t), name
    # the tied head arrives once and is tied again (one tensor, as in the policy)
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()


def test_batches_carry_the_version_that_sampled_them_and_its_logprobs(remote):
    tiny, engine, rollouts = remote
    policy, vocab = tiny.model, len(tiny.tokenizer)
    first = rollouts.version
    snapshots = {first: copy.deepcopy(policy)}
    taken = []
    for k in range(first, first + STEPS):  # one-step off-policy: k + 1 requested before step k trains
        rollouts.submit(k + 1, _prompts(k + 1, vocab), step_seed(0, k + 1))
        taken.append((rollouts.take(k, _prompts(k, vocab), step_seed(0, k)), rollouts.version))
        with torch.no_grad():
            for p in policy.parameters():
                p.mul_(0.98)  # "training": every version's weights differ
        snapshots[rollouts.publish(policy)] = copy.deepcopy(policy)
    rollouts.take(first + STEPS, _prompts(first + STEPS, vocab), step_seed(0, first + STEPS))  # drain
    lags = [version - got.oldest for got, version in taken]
    assert lags[0] == 0 and lags[1:] == [1] * (STEPS - 1)  # <= max_staleness = 1, and used
    for got, _ in taken:
        real = got.token_versions[got.batch.completion_mask.bool()]  # [tokens]
        assert (real == got.oldest).all()
        # the engine sampled with exactly the weights of the version it tagged: the same tokens and
        # log-probs as sampling here with that version's snapshot
        want = engine.generate(snapshots[got.oldest], tiny.tokenizer, _prompts(got.index, vocab),
                               seed=step_seed(0, got.index))  # fmt: skip
        assert torch.equal(got.batch.input_ids, want.input_ids)
        assert torch.equal(got.batch.behaviour_logp, want.behaviour_logp)


def test_close_leaves_no_process_behind(remote):
    _, _, rollouts = remote
    pid = rollouts.pid
    assert pid in _descendants(pid)
    rollouts.close()
    assert rollouts.process.returncode == 0  # it exited by itself, not killed
    assert not _descendants(pid)


def test_staleness_zero_reproduces_the_synchronous_run_bit_for_bit(tiny):
    sync_model = copy.deepcopy(tiny.model)
    engine = _engine(max_staleness=0)
    trainer = _Trainer(sync_model, engine)
    vocab, sync_batches = len(tiny.tokenizer), []
    for k in range(STEPS):  # the synchronous loop: sample with the current weights, then train
        batch = engine.generate(sync_model, tiny.tokenizer, _prompts(k, vocab), seed=step_seed(0, k))
        trainer.step(batch, k)
        sync_batches.append(batch)
    start = copy.deepcopy(tiny.model.state_dict())
    policy = tiny.model
    trainer = _Trainer(policy, engine)
    rollouts = make_rollouts(engine, tiny.tokenizer, policy, engine.schedule)
    assert isinstance(rollouts, RemoteRollouts)
    try:
        for k in range(STEPS):
            if k + 1 < STEPS:
                rollouts.submit(k + 1, _prompts(k + 1, vocab), step_seed(0, k + 1))
            got = rollouts.take(k, _prompts(k, vocab), step_seed(0, k))
            assert got.oldest == k  # sampled by the version that trains it
            assert torch.equal(got.batch.input_ids, sync_batches[k].input_ids)
            assert torch.equal(got.batch.behaviour_logp, sync_batches[k].behaviour_logp)
            trainer.step(got.batch, k)
            rollouts.publish(policy)
    finally:
        rollouts.close()
    weights = policy.state_dict()
    assert any(not torch.equal(weights[k], start[k]) for k in weights), "nothing trained"
    for name, v in sync_model.state_dict().items():
        assert torch.equal(weights[name], v), name


class DyingHF(HFRollout):
    """HF rollouts whose engine process dies (``os._exit(3)``) 1 s into its ``die_at``-th sampling."""

    calls = 0
    die_at = 2

    def generate(self, *args, **kwargs):
        main = sys.modules.get("__main__")
        if getattr(getattr(main, "__spec__", None), "name", "") == "longact_pl.rollout.engine_process":
            DyingHF.calls += 1
            if DyingHF.calls == self.die_at:
                time.sleep(1)  # the batch before it reaches the trainer first (it was sampled before)
                os._exit(3)
        return super().generate(*args, **kwargs)


def test_an_engine_process_dying_is_an_engine_failure_at_the_next_take(tiny):
    engine = _engine(DyingHF, max_staleness=1)
    rollouts = RemoteRollouts(engine, tiny.tokenizer, tiny.model, engine.schedule)
    vocab = len(tiny.tokenizer)
    try:
        rollouts.take(0, _prompts(0, vocab), 1)
        rollouts.submit(1, _prompts(1, vocab), 2)  # the engine dies sampling it
        rollouts.process.wait(timeout=60)
        assert rollouts.publish(tiny.model) == 1  # a push to a dead engine is recorded, not raised
        with pytest.raises(EngineFailure, match=r"batch 1 .*exit(ed with)? code 3.*nothing of this step"):
            rollouts.take(1, _prompts(1, vocab), 2)
    finally:
        rollouts.close()
    assert not _descendants(rollouts.pid)


# ----------------------------------------------------------------------------- through train.py
@pytest.fixture
def engine_pids(monkeypatch):
    """The pids of the engine processes started during the test."""
    from longact_pl.rollout import async_remote

    pids, init = [], async_remote.RemoteRollouts.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        pids.append(self.pid)

    monkeypatch.setattr(async_remote.RemoteRollouts, "__init__", record)
    return pids


@pytest.mark.slow  # a stopped and a resumed tiny run, each with its engine process (~10-60 s on 2 busy cores)
def test_an_engine_process_crash_stops_the_run_with_a_resumable_checkpoint(tmp_path, engine_pids):
    """The engine process dies sampling step 1's batch: the run stops naming the cause and a checkpoint of
    the weights after step 0 (nothing of step 1 applied); the resume (a new engine) trains steps 1 and 2."""
    common = [*ASYNC, "data.reward._target_=tests.helpers.ParityReward", "trainer.max_steps=3"]
    with pytest.raises(EngineFailure, match="batch 1 .*code 3.*resume from the checkpoint"):
        run(compose_train(tmp_path, *common, "rollout._target_=tests.rollout.test_async_disagg.DyingHF"),
            tmp_path)  # fmt: skip
    ckpt = tmp_path / "checkpoints" / "async_engine_failed.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 1
    metrics = run(compose_train(tmp_path, *common, f"ckpt_path={ckpt}"), tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    assert [float(r["train/async/lag_max"]) for r in rows] == [0.0, 0.0, 1.0]  # the resume's first is fresh
    assert metrics
    assert len(engine_pids) == 2 and not any(_descendants(pid) for pid in engine_pids)


@pytest.mark.slow  # three tiny runs (uninterrupted, stopped, resumed), each with its engine process
def test_sigterm_resumes_without_training_a_sample_twice_or_losing_one(tmp_path, engine_pids):
    from tests.rollout.test_async_train import CountingReward

    common = [*ASYNC, "data.reward._target_=tests.rollout.test_async_train.CountingReward",
              "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=1"]  # fmt: skip
    CountingReward.seen = []
    full = tmp_path / "full"
    run(compose_train(full, *common), full)
    expected = Counter(CountingReward.seen)
    CountingReward.seen = []
    part = tmp_path / "part"
    with pytest.raises(SystemExit):  # stopped after step 2, while the engine samples batch 3 ahead
        run(compose_train(part, *common, "+callbacks.sigterm._target_=tests.helpers.SigtermAt",
                          "+callbacks.sigterm.step=2"), part)  # fmt: skip
    assert len(CountingReward.seen) == sum(expected.values()) // 2  # 2 of the 4 steps trained
    run(compose_train(part, *common, f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}"), part)
    assert Counter(CountingReward.seen) == expected  # every prompt trained once, none lost
    assert len(engine_pids) == 3 and not any(_descendants(pid) for pid in engine_pids)


# ----------------------------------------------------------------------------- refusals (config alone)
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["rollout.placement=disaggregated"], "set rollout.mode=async"),
        (["rollout=vllm", "rollout.mode=async", "correction=token_tis"], "rollout.placement=disaggregated"),
        ([*ASYNC, "rollout=vllm", "rollout.placement=disaggregated", "rollout.round_tokens=4"],
         "rollout.round_tokens=null"),
        ([*ASYNC, "rollout=vllm", "rollout.placement=disaggregated", "rollout.sleep_level=1"],
         "rollout.sleep_level=0"),
        ([*ASYNC, "rollout=vllm", "rollout.placement=disaggregated",
          "+rollout.engine_kwargs.tensor_parallel_size=2"], "tensor_parallel_size"),
        (["rollout.mode=async", "correction=token_tis", "rollout.engine_device=cpu"],
         "rollout.placement=disaggregated or rollout.engine_device=null"),
        ([*ASYNC, "rollout.engine_device=gpu1"], "cpu or cuda:N"),
    ],
)  # fmt: skip
def test_unsupported_placements_are_refused_before_the_model_loads(tmp_path, no_model_load, overrides, match):
    with pytest.raises(ValueError, match=match):
        run(compose_train(tmp_path, *overrides), tmp_path)
    assert not tmp_path.joinpath("config.yaml").exists()


def test_vllm_async_is_accepted_disaggregated_and_refused_colocated():
    from longact_pl.rollout.async_loop import check_async
    from longact_pl.rollout.vllm import VLLMRollout

    tis = RolloutCorrection(level=TokenRatio())
    check_async(VLLMRollout(mode="async", placement="disaggregated"), tis, GroupPolicyGradient())
    with pytest.raises(ValueError, match="rollout.placement=disaggregated"):
        check_async(VLLMRollout(mode="async"), tis, GroupPolicyGradient())
