"""The async driver on a tiny model: staleness 0 is the synchronous loop bit for bit; staleness 1 lags <= 1
and corrects with the sampler's log-probs; partial rollouts switch weights between rounds."""

import copy
import os
import threading
import time

import pytest
import torch

from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.algos.correction import RolloutCorrection
from longact_pl.algos.correction_weights import TokenRatio
from longact_pl.distributed import LocalOps
from longact_pl.guards import NonFiniteGuard
from longact_pl.learner import Learner, OptimizerCalls
from longact_pl.ops.policy_logprobs import LogprobPass
from longact_pl.rollout.async_buffer import staleness_metrics
from longact_pl.rollout.async_hook import step_seed
from longact_pl.rollout.async_loop import AsyncRollouts, AsyncSettings, EngineFailure, generate_in_rounds
from longact_pl.rollout.hf import HFRollout

STEPS, B, G, NEW = 3, 2, 2, 6


def _prompts(step: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randint(3, vocab, (5 + i,), generator=gen).tolist() for i in range(B)]


def _rewards(batch) -> torch.Tensor:
    """Mixed rewards from the sampled tokens (parity of their sum), so the groups have advantages."""
    ids = batch.input_ids[:, batch.prompt_width :] * batch.completion_mask  # [N, C]
    return (ids.sum(-1) % 2).float()  # [N]


class _Trainer:
    """A learner with a real optimizer (SGD) and a spy on the correction's sampler log-probs."""

    def __init__(self, policy, engine):
        self.policy = policy
        self.correction = RolloutCorrection(level=TokenRatio(), high=2.0)
        passes = LogprobPass.for_model(policy, shared_prefix=True, chunk_size=None)
        self.learner = Learner(
            GroupPolicyGradient(kl_coef=0.0), passes, NonFiniteGuard(3), engine.temperature,
            correction=self.correction, external=True,
        )  # fmt: skip
        self.opt = torch.optim.SGD(policy.parameters(), lr=0.5)
        self.reference = None  # a frozen reference: prepare runs its no-grad log-prob pass
        self.sampler_logps = []
        weights = self.correction.weights

        def spy(train_logp, sampler_logp, mask):
            self.sampler_logps.append(sampler_logp.clone())
            return weights(train_logp, sampler_logp, mask)

        self.correction.weights = spy

    def step(self, batch, index):
        calls = OptimizerCalls(
            backward=lambda loss: loss.backward(), step=self.opt.step,
            zero_grad=lambda: self.opt.zero_grad(set_to_none=True), skip=lambda: None,
        )  # fmt: skip
        train = self.learner.prepare(self.policy, self.reference, batch, _rewards(batch))
        self.learner.update(self.policy, train, calls, LocalOps(), torch.Generator().manual_seed(index))


def _engine(**kwargs) -> HFRollout:
    return HFRollout(group_size=G, max_new_tokens=NEW, temperature=1.0, mode="async", **kwargs)


def _async_run(tiny, max_staleness, steps=STEPS):
    """``steps`` steps through the driver: (weights, [(batch, training version)], trainer, snapshots)."""
    policy, tok = tiny.model, tiny.tokenizer
    engine = _engine(max_staleness=max_staleness)
    trainer = _Trainer(policy, engine)
    rollouts = AsyncRollouts(engine, tok, policy, engine.schedule)
    vocab, taken, snapshots = len(tok), [], {0: copy.deepcopy(policy.state_dict())}
    try:
        for k in range(steps):
            if k + 1 < steps:  # the next batch is requested before this one is trained
                rollouts.submit(k + 1, _prompts(k + 1, vocab), step_seed(0, k + 1))
            got = rollouts.take(k, _prompts(k, vocab), step_seed(0, k))
            taken.append((got, rollouts.version))
            trainer.step(got.batch, k)
            rollouts.publish(policy)
            snapshots[k + 1] = copy.deepcopy(policy.state_dict())
    finally:
        rollouts.close()
    return policy.state_dict(), taken, trainer, snapshots


def test_staleness_zero_reproduces_the_synchronous_run_bit_for_bit(tiny):
    sync_model = copy.deepcopy(tiny.model)
    engine = _engine(max_staleness=0)
    trainer = _Trainer(sync_model, engine)
    sync_batches = []
    for k in range(STEPS):  # the synchronous loop: sample with the current weights, then train
        batch = engine.generate(
            sync_model, tiny.tokenizer, _prompts(k, len(tiny.tokenizer)), seed=step_seed(0, k)
        )
        trainer.step(batch, k)
        sync_batches.append(batch)
    start = copy.deepcopy(tiny.model.state_dict())
    weights, taken, _, _ = _async_run(tiny, max_staleness=0)
    assert all(got.oldest == version for got, version in taken)  # every batch sampled by the training version
    for (got, _), want in zip(taken, sync_batches):  # the same samples and sampler log-probs, bit for bit
        assert torch.equal(got.batch.input_ids, want.input_ids)
        assert torch.equal(got.batch.behaviour_logp, want.behaviour_logp)
    changed = [k for k in weights if not torch.equal(weights[k], start[k])]
    assert changed, "nothing trained: the comparison would be vacuous"
    for k, v in sync_model.state_dict().items():
        assert torch.equal(weights[k], v), k


def test_staleness_one_lags_at_most_one_and_corrects_with_the_samplers_logprobs(tiny):
    _, taken, trainer, snapshots = _async_run(tiny, max_staleness=1)
    lags = [version - got.oldest for got, version in taken]
    assert max(lags) <= 1
    assert lags[1:] == [1] * (STEPS - 1)  # batch k + 1 was sampled while step k trained, by version k
    # the importance weights were computed from exactly the sampler's log-probs of each batch
    assert len(trainer.sampler_logps) == STEPS
    for (got, _), seen in zip(taken, trainer.sampler_logps):
        assert torch.equal(seen, got.batch.behaviour_logp)
    # ... and those are the log-probs of the version that sampled, not of the one that trained
    got, version = taken[-1]
    model = copy.deepcopy(trainer.policy)
    learner = trainer.learner
    logp = {}
    for v in (got.oldest, version):
        model.load_state_dict(snapshots[v])
        logp[v] = learner.no_grad_logprobs(model, got.batch)  # [N, C]
    mask = got.batch.completion_mask.bool()
    sampler = got.batch.behaviour_logp[mask]
    assert torch.allclose(sampler, logp[got.oldest][mask], atol=1e-4)
    assert not torch.allclose(sampler, logp[version][mask], atol=1e-3)


def test_partial_rollouts_resume_with_the_new_weights(tiny):
    policy, tok = tiny.model, tiny.tokenizer
    engine = _engine(round_tokens=2)
    sampler = copy.deepcopy(policy)
    newer = copy.deepcopy(policy)
    with torch.no_grad():
        for p in newer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    version = {"v": 0}

    def refresh():  # the trainer published version 1 during the first round
        if version["v"] == 0:
            sampler.load_state_dict(newer.state_dict())
            version["v"] = 1

    prompts = _prompts(0, len(tok))
    batch, versions = generate_in_rounds(engine, sampler, tok, prompts, 0, 2, lambda: version["v"], refresh)
    mask = batch.completion_mask.bool()  # [N, C]
    long_rows = mask.sum(-1) > 2
    assert long_rows.any()
    assert (versions[:, :2][mask[:, :2]] == 0).all()  # the first round: version 0
    assert (versions[:, 2:][mask[:, 2:]] == 1).all()  # resumed after the update: version 1
    learner = Learner(
        GroupPolicyGradient(), LogprobPass.for_model(policy, chunk_size=None), NonFiniteGuard(3), 1.0
    )
    old, new = learner.no_grad_logprobs(policy, batch), learner.no_grad_logprobs(newer, batch)  # [N, C]
    first, later = mask.clone(), mask.clone()
    first[:, 2:], later[:, :2] = False, False
    assert torch.allclose(batch.behaviour_logp[first], old[first], atol=1e-4)
    assert torch.allclose(batch.behaviour_logp[later], new[later], atol=1e-4)
    assert not torch.allclose(batch.behaviour_logp[later], old[later], atol=1e-3)
    assert batch.completion_mask.shape[0] == B * G and (batch.completion_mask.sum(-1) <= NEW).all()


class _PausingHF(HFRollout):
    """HF rollouts whose first continuation round of batch 1 waits until the trainer published version 1."""

    published = None  # threading.Event, set by the test after the publish

    def generate(self, *args, **kwargs):
        seed = kwargs.get("seed", 0) - step_seed(0, 1)  # continuation rounds of batch 1: 7919 * round
        if self.group_size == 1 and seed > 0 and seed % 7919 == 0:
            assert _PausingHF.published.wait(timeout=30)
        return super().generate(*args, **kwargs)


def test_the_driver_pauses_a_long_completion_at_the_weight_update_and_resumes_with_the_new_weights(tiny):
    """Rounds of 2 tokens (6 in all): batch 1's 2nd round waits for the publish of version 1, so its 3rd
    round samples with version 1; the trained batch records versions [0, 0, 0, 0, 1, 1] for a long row."""
    import threading

    policy, tok = tiny.model, tiny.tokenizer
    _PausingHF.published = threading.Event()
    engine = _PausingHF(group_size=G, max_new_tokens=NEW, temperature=1.0, mode="async", round_tokens=2)
    trainer = _Trainer(policy, engine)
    rollouts = AsyncRollouts(engine, tok, policy, engine.schedule)
    vocab = len(tok)
    try:
        rollouts.submit(1, _prompts(1, vocab), step_seed(0, 1))
        first = rollouts.take(0, _prompts(0, vocab), step_seed(0, 0))
        trainer.step(first.batch, 0)
        rollouts.publish(policy)
        _PausingHF.published.set()
        second = rollouts.take(1, _prompts(1, vocab), step_seed(0, 1))
    finally:
        rollouts.close()
    mask = second.batch.completion_mask.bool()  # [N, C]
    full = mask.sum(-1) == NEW
    assert full.any()
    assert second.token_versions[full].tolist() == [[0, 0, 0, 0, 1, 1]] * int(full.sum())
    metrics = staleness_metrics(second.token_versions, second.batch.completion_mask, rollouts.version)
    assert metrics["train/async/version_span_max"] == 1 and metrics["train/async/lag_max"] == 1
    # the resumed tokens' log-probs are the new weights' (the sampler loaded version 1 at the pause)
    learner = trainer.learner
    new = learner.no_grad_logprobs(policy, second.batch)  # [N, C]: policy holds version 1
    late = mask.clone()
    late[:, :4] = False
    assert torch.allclose(second.batch.behaviour_logp[late], new[late], atol=1e-4)


def test_an_engine_failure_reaches_the_trainer_with_its_cause(tiny):
    engine = _engine()

    def broken(*args, **kwargs):
        raise OSError("engine process died")

    engine.generate = broken
    rollouts = AsyncRollouts(engine, tiny.tokenizer, tiny.model, engine.schedule)
    try:
        with pytest.raises(EngineFailure, match="sampling batch 0 .*engine process died") as err:
            rollouts.take(0, _prompts(0, len(tiny.tokenizer)), 0)
        assert isinstance(err.value.__cause__, OSError)
    finally:
        rollouts.close()


def test_settings_reach_the_engine():
    assert _engine(max_staleness=0).schedule == AsyncSettings("async", 0)


def test_the_samplers_forwards_do_not_reach_the_policys_hooks(tiny):
    """Saliency statistics hook the policy's modules: the producer's copy samples without calling them."""
    calls = []
    layer = tiny.model.model.layers[0].self_attn.q_proj
    handle = layer.register_forward_hook(lambda *args: calls.append(1))
    engine = _engine()
    rollouts = AsyncRollouts(engine, tiny.tokenizer, tiny.model, engine.schedule)
    try:
        got = rollouts.take(0, _prompts(0, len(tiny.tokenizer)), 0)
        assert got.batch.completion_mask.sum() > 0 and calls == []
        tiny.model(input_ids=got.batch.input_ids[:1])  # the policy's own forward still reaches it
        assert calls == [1]
    finally:
        rollouts.close()
        handle.remove()


@pytest.mark.parametrize("prefill_once", [False, True], ids=["hf", "hf_shared"])
def test_the_producer_samples_what_the_engine_samples_on_the_policy(tiny, prefill_once):
    """Same weights and seed: the thread's batch equals the synchronous one (rollout=hf and hf_shared)."""
    engine = _engine(prefill_once=prefill_once)
    prompts = _prompts(0, len(tiny.tokenizer))
    want = engine.generate(tiny.model, tiny.tokenizer, prompts, seed=7)
    rollouts = AsyncRollouts(engine, tiny.tokenizer, tiny.model, engine.schedule)
    try:
        got = rollouts.take(0, prompts, 7).batch
    finally:
        rollouts.close()
    assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.behaviour_logp, want.behaviour_logp)


class _RecordingHF(HFRollout):
    """HF rollouts that record, per batch (by seed), the version the producer published when it started and
    set an event once it finished; batch ``wait_for[seed]`` waits for an event before starting."""

    def __init__(self, rollouts_box, **kwargs):
        super().__init__(**kwargs)
        self.box, self.started_at, self.done, self.wait_for = rollouts_box, {}, {}, {}
        self.began: dict[int, float] = {}  # seed -> perf_counter when decoding began (after any wait)

    def generate(self, *args, **kwargs):
        seed = kwargs["seed"]
        if seed in self.wait_for:
            assert self.wait_for[seed].wait(timeout=60), "the trainer's pass never started"
        self.started_at[seed] = self.box[0].version
        self.began[seed] = time.perf_counter()
        out = super().generate(*args, **kwargs)
        self.done.setdefault(seed, threading.Event()).set()
        return out


def test_staleness_two_samples_two_batches_ahead_and_no_token_lags_more(tiny):
    """max_staleness=2: while step k trains, batches k+1 and k+2 are sampled (k+2 by version k: lag 2);
    no batch starts before version j - 2 is published, every batch is taken once, in order."""
    policy, tok = tiny.model, tiny.tokenizer
    box = [None]
    engine = _RecordingHF(
        box, group_size=G, max_new_tokens=NEW, temperature=1.0, mode="async", max_staleness=2
    )
    trainer = _Trainer(policy, engine)
    rollouts = box[0] = AsyncRollouts(engine, tok, policy, engine.schedule)
    steps, vocab, taken = 5, len(tok), []
    seeds = [step_seed(0, k) for k in range(steps)]
    try:
        for k in range(steps):
            for j in (k + 1, k + 2):  # the hook's lookahead: max_staleness batches ahead
                if j < steps:
                    rollouts.submit(j, _prompts(j, vocab), seeds[j])
            got = rollouts.take(k, _prompts(k, vocab), seeds[k])
            if k + 2 < steps:  # batch k + 2 is sampled before step k trains: two versions behind
                done = engine.done.setdefault(seeds[k + 2], threading.Event())
                assert done.wait(timeout=60)
            taken.append((got.index, rollouts.version - got.oldest))
            trainer.step(got.batch, k)
            rollouts.publish(policy)
    finally:
        rollouts.close()
    assert [index for index, _ in taken] == list(range(steps))  # each batch trained once, none lost
    lags = [lag for _, lag in taken]
    assert max(lags) <= 2 and lags[2:] == [2] * (steps - 2)  # the lookahead really ran two batches ahead
    for j, seed in enumerate(seeds):  # bounded staleness: batch j started once version j - 2 was published
        assert engine.started_at[seed] >= j - 2
    assert sorted(engine.started_at) == sorted(seeds)  # each batch sampled exactly once


def test_the_next_batch_is_sampled_while_the_trainer_runs_its_reference_pass(tiny):
    """Colocated overlap, by timestamps: batch 1's sampling interval intersects step 0's no-grad reference
    log-prob pass (batch 1 starts once the pass has started; the pass ends only after batch 1 is sampled:
    were the two serialised, this would time out)."""
    policy, tok = tiny.model, tiny.tokenizer
    box = [None]
    engine = _RecordingHF(box, group_size=G, max_new_tokens=NEW, temperature=1.0, mode="async")
    trainer = _Trainer(policy, engine)
    trainer.reference = copy.deepcopy(policy).eval()
    pass_started, passes = threading.Event(), []
    no_grad = trainer.learner.no_grad_logprobs

    def timed_pass(*args, **kwargs):  # step 0's reference pass, waiting until batch 1 is sampled
        start = time.perf_counter()
        pass_started.set()
        sampling = engine.done.setdefault(step_seed(0, 1), threading.Event())
        assert sampling.wait(timeout=60), "batch 1 was not sampled during the pass"
        out = no_grad(*args, **kwargs)
        passes.append((start, time.perf_counter()))
        return out

    trainer.learner.no_grad_logprobs = timed_pass
    engine.wait_for[step_seed(0, 1)] = pass_started
    rollouts = box[0] = AsyncRollouts(engine, tok, policy, engine.schedule)
    try:
        first = rollouts.take(0, _prompts(0, len(tok)), step_seed(0, 0))
        rollouts.submit(1, _prompts(1, len(tok)), step_seed(0, 1))
        trainer.step(first.batch, 0)
        rollouts.publish(policy)
        second = rollouts.take(1, _prompts(1, len(tok)), step_seed(0, 1))
    finally:
        rollouts.close()
    (pass_start, pass_end), *_ = passes  # step 0's reference pass (step 1 runs its own)
    # the producer took batch 1 before the pass (its `started`), then decoded it during the trainer's pass
    began = engine.began[step_seed(0, 1)]
    assert second.started <= began and pass_start <= began < min(second.finished, pass_end)
    assert second.finished > second.started > first.finished


class _ThreadCountHF(HFRollout):
    """HF rollouts that run one large matmul first and record the process's OS threads while it runs."""

    tasks = None

    def generate(self, *args, **kwargs):
        a = torch.randn(768, 768)
        for _ in range(3):
            a = (a @ a).tanh()  # large enough for an OpenMP team of every thread the caller is allowed
        _ThreadCountHF.tasks = len(os.listdir("/proc/self/task"))
        return super().generate(*args, **kwargs)


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or not os.path.isdir("/proc/self/task"), reason="2 cores, Linux"
)
@pytest.mark.parametrize("threads", [None, 2], ids=["inherited", "two"])
def test_the_producer_thread_takes_its_creators_torch_thread_count(tiny, threads):
    """OpenMP's thread count is per thread: after torch.set_num_threads(1) the producer runs without an
    OpenMP worker of its own (one OS thread more than before it started), unless told otherwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = _ThreadCountHF(group_size=G, max_new_tokens=2, temperature=1.0, mode="async")
    start = len(os.listdir("/proc/self/task"))
    rollouts = AsyncRollouts(engine, tiny.tokenizer, tiny.model, engine.schedule, threads=threads)
    try:
        rollouts.take(0, _prompts(0, len(tiny.tokenizer)), 0)
    finally:
        rollouts.close()
        torch.set_num_threads(before)
    assert _ThreadCountHF.tasks == start + (1 if threads is None else 2)


def test_a_publish_reaches_the_sampler_through_one_kept_buffer_on_cpu(tiny):
    """Each published version is what the sampler loads, bit for bit; on CPU the hand-over buffer is
    allocated once (the second publish copies into the same storage)."""
    policy = tiny.model
    engine = _engine(max_staleness=2)
    rollouts = AsyncRollouts(engine, tiny.tokenizer, policy, engine.schedule)
    vocab = len(tiny.tokenizer)
    try:
        rollouts.take(0, _prompts(0, vocab), 0)  # batches are sampled in index order, from version 0
        ptrs = []
        for version in (1, 2):
            with torch.no_grad():
                for p in policy.parameters():
                    p.add_(0.01 * version)
            assert rollouts.publish(policy) == version
            ptrs.append({k: v.data_ptr() for k, v in rollouts._staging.items()})
            got = rollouts.take(version, _prompts(version, vocab), version)  # batch `version`: loads it first
            assert got.oldest == version
            for name, value in policy.state_dict().items():
                assert torch.equal(rollouts.sampler.state_dict()[name], value), name
        assert ptrs[0] == ptrs[1]
    finally:
        rollouts.close()
