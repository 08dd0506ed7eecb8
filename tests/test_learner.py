"""The learner's rules on a tiny model, with fake data-parallel collectives (no processes, no Lightning)."""

import copy

import pytest
import torch

from longact_pl.algos.algorithm import GroupPolicyGradient
from longact_pl.algos.correction import RolloutCorrection
from longact_pl.algos.correction_weights import TokenRatio
from longact_pl.algos.surrogates import SequenceClip
from longact_pl.distributed import LocalOps
from longact_pl.guards import NonFiniteGuard
from longact_pl.learner import Learner, OptimizerCalls, TrainBatch
from longact_pl.minibatch import take
from longact_pl.ops.logprob_plan import LogprobPlan
from longact_pl.ops.logprobs import completion_logprobs
from longact_pl.ops.policy_logprobs import LogprobPass
from longact_pl.rollout.types import RolloutBatch
from tests.helpers import FakeOps

G, P, C, T = 2, 6, 5, 0.7
LENGTHS = [5, 2, 4, 1]  # completion lengths: a mixed batch
ADVANTAGES = torch.tensor([1.0, -0.5, 0.3, -0.8])  # [N]


def _rollouts(vocab: int) -> RolloutBatch:
    """2 groups of 2 rows; group 1's prompt has 2 padding tokens; completions of mixed lengths."""
    gen = torch.Generator().manual_seed(0)
    n = len(LENGTHS)
    prompts = torch.randint(3, vocab, (n // G, P), generator=gen).repeat_interleave(G, 0)  # [N, P]
    prompt_mask = torch.ones(n, P, dtype=torch.long)  # [N, P]
    prompt_mask[G:, :2] = 0
    completion_mask = (torch.arange(C)[None] < torch.tensor(LENGTHS)[:, None]).long()  # [N, C]
    completions = torch.randint(3, vocab, (n, C), generator=gen) * completion_mask  # [N, C]
    return RolloutBatch(
        input_ids=torch.cat([prompts * prompt_mask, completions], 1),
        attention_mask=torch.cat([prompt_mask, completion_mask], 1),
        completion_mask=completion_mask,
        behaviour_logp=-torch.rand(n, C, generator=gen) * 3 * completion_mask,  # not the policy's: ratio != 1
        completions=[""] * n,
        prompt_width=P,
        group_size=G,
    )


class _Recorder:
    """``OptimizerCalls`` that record instead of stepping (``sgd_lr``: take a plain SGD step)."""

    def __init__(self, model, sgd_lr: float = 0.0) -> None:
        self.model, self.sgd_lr = model, sgd_lr
        self.losses, self.grads, self.skips, self.zeroed = [], [], 0, 0

    def calls(self) -> OptimizerCalls:
        return OptimizerCalls(self._backward, self._step, self._zero_grad, self._skip)

    def _backward(self, loss):
        self.losses.append(loss.detach())
        loss.backward()

    def _step(self):
        self.grads.append({n: p.grad.clone() for n, p in self.model.named_parameters()})
        with torch.no_grad():
            for p in self.model.parameters():
                p -= self.sgd_lr * p.grad

    def _zero_grad(self):
        self.zeroed += 1
        self.model.zero_grad(set_to_none=True)

    def _skip(self):
        self.skips += 1


def GRPO(kl_coef: float = 0.04, **kwargs) -> GroupPolicyGradient:  # noqa: N802 - reads as the preset
    """The GRPO preset (``conf/algo/grpo.yaml``'s loss settings)."""
    return GroupPolicyGradient(kl_coef=kl_coef, **kwargs)


class _SpyLoss(GroupPolicyGradient):
    """GRPO that records what the learner passes to its loss."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = []

    def loss(self, logp, old_logp, ref_logp, advantages, mask, **kwargs):
        self.calls.append({"logp": logp.detach().clone(), "old": old_logp.clone(), **kwargs})
        return super().loss(logp, old_logp, ref_logp, advantages, mask, **kwargs)


def _learner(algorithm, pack: bool = False, entropy_grad: bool = False, **kwargs) -> Learner:
    """A learner on the shared-prompt path (``pack``: completions packed), LM head in one chunk."""
    plan = LogprobPlan("packed" if pack else "padded", "sdpa", entropy_grad=entropy_grad)
    return Learner(algorithm, LogprobPass(plan), NonFiniteGuard(3), T, **kwargs)


def _update(learner, model, batch, dist=None, sgd_lr=0.0):
    rec = _Recorder(model, sgd_lr)
    metrics = learner.update(model, batch, rec.calls(), dist or LocalOps(), torch.Generator().manual_seed(0))
    return rec, metrics


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean"])
def test_micro_batches_add_up_to_the_whole_mini_batch(tiny, aggregation):
    """Loss sum and gradient of 4 one-row micro-batches equal one 4-row micro-batch (with the KL term)."""
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    algo = GRPO(kl_coef=0.5, aggregation=aggregation)
    policy_logp = _learner(algo).no_grad_logprobs(model, ro)  # [N, C]
    ref = policy_logp + 0.2 * torch.randn(policy_logp.shape, generator=torch.Generator().manual_seed(1))
    batch = TrainBatch(ro, ADVANTAGES, ref_logp=ref * ro.completion_mask)  # [N, C] near the policy
    whole, _ = _update(_learner(algo, micro_batch_size=4), model, batch)
    micro, _ = _update(_learner(algo, micro_batch_size=1), model, batch)
    assert len(whole.losses) == 1 and len(micro.losses) == 4 and len(micro.grads) == 1
    torch.testing.assert_close(sum(micro.losses), whole.losses[0], rtol=1e-5, atol=1e-7)
    for name, grad in whole.grads[0].items():
        scale = float(grad.abs().max())  # summation order differs: errors relative to the largest entry
        torch.testing.assert_close(micro.grads[0][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
    assert max(g.abs().max() for g in whole.grads[0].values()) > 1e-3  # a real gradient


def test_update_equals_a_hand_written_step(tiny):
    """One on-policy step over micro-batches = the loss of the whole batch by the naive log-prob path."""
    model = tiny.model.train()
    naive = copy.deepcopy(model)
    ro = _rollouts(model.config.vocab_size)
    rec, _ = _update(
        _learner(GRPO(kl_coef=0.0), micro_batch_size=2), model, TrainBatch(ro, ADVANTAGES), sgd_lr=1.0
    )
    logp, _ = completion_logprobs(naive, ro.input_ids, ro.attention_mask, C, T)  # [N, C]
    loss, _ = GRPO(kl_coef=0.0).loss(logp, logp.detach(), None, ADVANTAGES, ro.completion_mask.float())
    loss.backward()
    torch.testing.assert_close(sum(rec.losses), loss.detach(), rtol=1e-5, atol=1e-7)
    for name, param in naive.named_parameters():
        torch.testing.assert_close(rec.grads[0][name], param.grad, rtol=1e-4, atol=1e-7, msg=name)
        # the recorder's SGD step (lr 1) moved the learner's weights by exactly the naive gradient
        torch.testing.assert_close(dict(model.named_parameters())[name], param - param.grad, msg=name)


def test_one_pass_over_one_mini_batch_is_on_policy(tiny):
    """``old = logp.detach()``: the ratio is exactly 1 however far the behaviour log-probs are."""
    model = tiny.model.train()
    algo = _SpyLoss(kl_coef=0.0)
    _, metrics = _update(
        _learner(algo, micro_batch_size=2), model, TrainBatch(_rollouts(model.config.vocab_size), ADVANTAGES)
    )
    assert len(algo.calls) == 2 and all(torch.equal(c["old"], c["logp"]) for c in algo.calls)
    assert metrics["train/ratio_mean"] == 1.0 and metrics["train/clip_frac_low"] == 0.0


@pytest.mark.parametrize(("epochs", "mini", "steps"), [(2, 0, 2), (1, 2, 2), (2, 2, 4)])
def test_several_optimizer_steps_use_the_behaviour_logprobs(tiny, epochs, mini, steps):
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    algo = _SpyLoss(kl_coef=0.0)
    learner = _learner(algo, ppo_epochs=epochs, mini_batch_size=mini, micro_batch_size=4)
    rec, metrics = _update(learner, model, TrainBatch(ro, ADVANTAGES), sgd_lr=1e-3)
    assert len(rec.grads) == steps and rec.zeroed == steps
    for call in algo.calls:  # every row of old is a behaviour row (the policy's own would give ratio 1)
        assert all(any(torch.equal(row, b) for b in ro.behaviour_logp) for row in call["old"])
    assert abs(metrics["train/ratio_mean"] - 1.0) > 0.1


def test_tis_with_several_passes_uses_the_trainers_old_logprobs(tiny):
    """External sampler + TIS: ``prepare`` takes the trainer's log-probs; the engine's only weight tokens."""
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    algo = _SpyLoss(kl_coef=0.0)
    tis = {"correction": RolloutCorrection(level=TokenRatio(), high=2.0), "external": True}
    learner = _learner(algo, ppo_epochs=2, micro_batch_size=4, **tis)
    batch = learner.prepare(model, None, ro, ADVANTAGES)
    # the advantages come from the rewards: group-normalised ([1, -0.5] and [0.3, -0.8] -> +-0.7071)
    torch.testing.assert_close(
        batch.advantages, torch.tensor([0.7071, -0.7071, 0.7071, -0.7071]), atol=1e-4, rtol=0
    )
    assert batch.ref_logp is None
    want, _ = completion_logprobs(model, ro.input_ids, ro.attention_mask, C, T)  # [N, C]
    mask = ro.completion_mask.bool()
    torch.testing.assert_close(batch.old_logp[mask], want.detach()[mask])
    _update(learner, model, batch, sgd_lr=1e-3)
    for call in algo.calls:  # both epochs: the same pre-update trainer log-probs
        assert torch.equal(call["old"], batch.old_logp)
        weights = (batch.old_logp - ro.behaviour_logp).exp().clamp(max=2.0)  # [N, C]
        torch.testing.assert_close(call["token_weights"][mask], weights[mask])
    # one on-policy pass needs no extra forward: old = logp.detach(), weighted against the engine
    assert _learner(algo, **tis).prepare(model, None, ro, ADVANTAGES).old_logp is None


@pytest.mark.parametrize(
    "algo",
    [
        {"kl_coef": 0.5},  # GRPO with the KL term
        {"eps_high": 0.28, "aggregation": "token_mean"},  # DAPO's loss
        {"eps_low": 3e-4, "eps_high": 4e-4, "surrogate": SequenceClip()},  # GSPO
    ],
    ids=["grpo_kl", "dapo", "gspo"],
)
def test_one_on_policy_pass_skips_the_old_pass_with_the_same_numbers(tiny, algo):
    """One epoch, one mini-batch: no old log-prob pass (``prepare`` leaves ``old_logp`` empty, as TRL with
    ``num_iterations=1``); the pass's own detached log-probs equal, bit for bit, what that pass gives, so the
    loss, ratio and clip metrics, the rollout-correction weights and mismatch metrics, and the gradient are
    those of a step that ran it. The ratio carries the gradient (non-zero, equal to the naive step's)."""
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    tis = {"correction": RolloutCorrection(level=TokenRatio(), high=2.0), "external": True}
    learner = _learner(_SpyLoss(**algo), micro_batch_size=2, **tis)
    ref = learner.no_grad_logprobs(model, ro) + 0.1 * ro.completion_mask  # [N, C] a reference model's
    skipped = learner.prepare(model, None, ro, ADVANTAGES)
    assert skipped.old_logp is None  # no pass ran
    old = learner.no_grad_logprobs(model, ro)  # [N, C]: what the old pass would give
    runs = {}
    for name, old_logp in (("skipped", None), ("old_pass", old)):
        algorithm = _SpyLoss(**algo)
        rec, metrics = _update(
            _learner(algorithm, micro_batch_size=2, **tis), model, TrainBatch(ro, ADVANTAGES, ref, old_logp)
        )
        runs[name] = (rec, metrics, algorithm.calls)
    (rec_a, met_a, calls_a), (rec_b, met_b, calls_b) = runs["skipped"], runs["old_pass"]
    for call in calls_a:  # the pass's own log-probs are the old pass's, bit for bit
        rows = [i for i in range(len(ro.completion_mask)) if any(torch.equal(call["logp"][j], old[i])
                for j in range(len(call["logp"])))]  # fmt: skip
        assert len(rows) == len(call["logp"])
    assert met_a.keys() == met_b.keys() and any(k.startswith("train/correction/") for k in met_a)
    for key in met_a:
        assert float(met_a[key]) == float(met_b[key]), key
    assert [float(x) for x in rec_a.losses] == [float(x) for x in rec_b.losses]
    for c_a, c_b in zip(calls_a, calls_b):
        assert torch.equal(c_a["token_weights"], c_b["token_weights"])
    for name, grad in rec_a.grads[0].items():
        assert torch.equal(grad, rec_b.grads[0][name]), name
    assert max(g.abs().max() for g in rec_a.grads[0].values()) > 1e-6  # the ratio carried a gradient


def test_counts_are_global_through_the_ops_sum(tiny):
    """Token mean over 2 ranks: this rank's loss is divided by both ranks' tokens, then scaled by 2."""
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    batch = TrainBatch(ro, ADVANTAGES)
    algo = GRPO(kl_coef=0.0, aggregation="token_mean")
    local, _ = _update(_learner(algo), model, batch)
    other = torch.tensor([4.0, 9.0])  # the other rank's sequences and tokens
    dist = FakeOps(world_size=2, other_sums=[other])
    ranked, _ = _update(_learner(algo), model, batch, dist)
    tokens = float(ro.completion_mask.sum())
    assert dist.sum_calls[0].tolist() == [4.0, tokens]
    # backward sees the loss times the world size, normalised by the global token count
    torch.testing.assert_close(ranked.losses[0], local.losses[0] * 2 * tokens / (tokens + 9.0))


def test_a_step_that_is_not_finite_on_some_rank_is_skipped(tiny):
    model = tiny.model.train()
    batch = TrainBatch(_rollouts(model.config.vocab_size), ADVANTAGES)
    dist = FakeOps(world_size=2, other_mins=[0])  # finite here, not on the other rank
    rec, metrics = _update(_learner(GRPO(kl_coef=0.0)), model, batch, dist)
    assert dist.min_calls == [1] and rec.skips == 1 and rec.grads == [] and rec.zeroed == 1
    assert "train/grad_norm" not in metrics
    nan = TrainBatch(batch.rollouts, torch.full_like(ADVANTAGES, float("nan")))
    rec, _ = _update(_learner(GRPO(kl_coef=0.0)), model, nan)
    assert rec.skips == 1 and rec.grads == []


class _Hook:
    """A ``LearnerHook`` that records what the learner tells it; ``transform`` changes the gradient."""

    def __init__(self, transform=None) -> None:
        self.transform = transform
        self.masks: list[torch.Tensor | None] = []
        self.transforms: list[int] = []  # optimizer steps (after_step calls) seen at each transform_grads
        self.steps = 0
        self.params: list = []

    def on_forward(self, token_mask):
        self.masks.append(None if token_mask is None else token_mask.clone())

    def transform_grads(self, params):
        self.transforms.append(self.steps)
        self.params = list(params)
        if self.transform is not None:
            self.transform()

    def after_step(self):
        self.steps += 1


def test_hooks_see_each_training_forward_and_transform_each_optimizer_step_once(tiny):
    """2 epochs x 2 mini-batches of one group: 4 optimizer steps, one ``transform_grads`` before each and one
    ``after_step`` after it; every real token of each step's training forwards is announced once per decoder
    layer (prompt ``[1, P_g]``, completions ``[G, C]``), the no-grad passes of ``prepare`` never."""
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    learner = _learner(GRPO(kl_coef=0.04), ppo_epochs=2, mini_batch_size=2)
    hook, other = _Hook(), _Hook()
    learner.add_hook(hook)
    learner.add_hook(other)
    learner.add_hook(hook)  # once only
    batch = learner.prepare(model, copy.deepcopy(model), ro, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert hook.masks == []  # the reference pass is not announced
    rec, _ = _update(learner, model, batch)
    assert len(rec.grads) == 4 and hook.steps == other.steps == 4
    assert hook.transforms == [0, 1, 2, 3]  # exactly once per optimizer step, before it
    assert [p.data_ptr() for p in hook.params] == [p.data_ptr() for p in model.parameters()]
    layers = model.config.num_hidden_layers  # the interleaved shared-prefix pass tells each layer run
    assert hook.masks[1::2] == [None] * 8 * layers  # closed after each layer run of the 8 forwards
    shapes = [tuple(m.shape) for m in hook.masks[::2]]
    told = sum(int(m.sum()) for m in hook.masks[::2])
    real_prompts, real_completions = P + (P - 2), sum(LENGTHS)
    assert told == 2 * layers * (real_prompts + real_completions)  # each epoch: every real token once a layer
    assert sorted(set(shapes)) == [(1, P - 2), (1, P), (G, max(LENGTHS[2:])), (G, max(LENGTHS[:2]))]
    learner.remove_hook(hook)
    _update(learner, model, batch)
    assert hook.steps == 4 and other.steps == 8
    with pytest.raises(TypeError, match="not a LearnerHook"):
        learner.add_hook(object())


def test_a_skipped_step_is_transformed_but_not_reported_as_taken(tiny):
    model = tiny.model.train()
    nan = TrainBatch(_rollouts(model.config.vocab_size), torch.full_like(ADVANTAGES, float("nan")))
    learner, hook = _learner(GRPO(kl_coef=0.0)), _Hook()
    learner.add_hook(hook)
    rec, _ = _update(learner, model, nan)
    assert rec.skips == 1 and hook.transforms == [0] and hook.steps == 0


def test_the_guard_and_grad_norm_see_the_transformed_gradient(tiny):
    """A hook's ``transform_grads`` (LongAct zeroing frozen rows) runs before the guard.

    A NaN only in a zeroed row does not skip the step; ``train/grad_norm`` is the applied gradient's norm and
    ``train/grad_norm_pre_mask`` the one before the transform.
    """
    model = tiny.model.train()
    batch = TrainBatch(_rollouts(model.config.vocab_size), ADVANTAGES)
    name = "model.layers.0.self_attn.q_proj.weight"
    weight = model.get_parameter(name)

    def run(transform):
        rec, learner = _Recorder(model), _learner(GRPO(kl_coef=0.0))
        learner.add_hook(_Hook(transform))
        return rec, learner.update(model, batch, rec.calls(), LocalOps(), torch.Generator())

    def zero_row_3():
        weight.grad[3] = 0.0

    _, dense = _update(_learner(GRPO(kl_coef=0.0)), model, batch)
    rec, masked = run(zero_row_3)
    assert "train/grad_norm_pre_mask" not in dense
    assert masked["train/grad_norm_pre_mask"] == pytest.approx(dense["train/grad_norm"], rel=1e-5)
    applied = torch.linalg.vector_norm(torch.stack([g.norm() for g in rec.grads[0].values()]))
    assert masked["train/grad_norm"] == pytest.approx(float(applied), rel=1e-5)
    assert masked["train/grad_norm"] < dense["train/grad_norm"]
    # a NaN in row 3 of the gradient: skipped when the guard looks before masking, taken when after
    handle = weight.register_hook(lambda g: g.index_fill(0, torch.tensor([3]), float("nan")))
    skipped, _ = run(lambda: None)
    rec, nan = run(zero_row_3)
    handle.remove()
    assert skipped.skips == 1 and rec.skips == 0 and torch.equal(rec.grads[0][name][3], torch.zeros(64))
    assert nan["train/grad_norm"] == pytest.approx(masked["train/grad_norm"], rel=1e-5)
    assert nan["train/grad_norm_pre_mask"] != nan["train/grad_norm_pre_mask"]  # NaN, logged as such


def test_take_is_a_view_for_a_run_of_rows():
    t = torch.arange(12).view(4, 3)
    run = take(t, torch.tensor([1, 2]))
    assert run.data_ptr() == t[1].data_ptr() and torch.equal(run, t[1:3])
    assert torch.equal(take(t, torch.tensor([2, 0])), t[[2, 0]])


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("ppo_epochs", {"ppo_epochs": 0}), ("mini_batch_size", {"mini_batch_size": -1}),
     ("micro_batch_size", {"micro_batch_size": 0}),
     ("correction.level", {"correction": RolloutCorrection(level=TokenRatio())})],
)  # fmt: skip
def test_bad_settings_name_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field if "." in field else f"module.learner.{field}"):
        _learner(GRPO(), **kwargs)
