"""Token-budget micro-batches: groups kept whole, the fixed-size gradient, and ranks kept in lock-step."""

import csv

import pytest
import torch
from hydra.errors import InstantiationException

from longact_pl.learner import TrainBatch
from longact_pl.minibatch import TokenMicroBatches, check_token_budget
from longact_pl.models.hf import load_hf
from longact_pl.rollout.types import RolloutBatch
from longact_pl.train import run
from tests.helpers import FakeOps, compose_train
from tests.test_learner import GRPO, _learner, _update
from tests.test_train import PARITY

P, C = 6, 8
# three groups of 3 rows: real prompt lengths 6, 4, 5; mixed completion lengths (one at the whole width)
PROMPTS = [6, 4, 5]
LENGTHS = [[8, 2, 1], [3, 3, 2], [1, 5, 2]]


def _rollouts(vocab: int = 100) -> RolloutBatch:
    gen = torch.Generator().manual_seed(0)
    n = sum(len(g) for g in LENGTHS)
    prompt_mask = torch.tensor([[0] * (P - p) + [1] * p for p in PROMPTS]).repeat_interleave(3, 0)  # [N, P]
    prompts = torch.randint(3, vocab, (3, P), generator=gen).repeat_interleave(3, 0) * prompt_mask
    lengths = torch.tensor([x for g in LENGTHS for x in g])
    completion_mask = (torch.arange(C)[None] < lengths[:, None]).long()  # [N, C]
    completions = torch.randint(3, vocab, (n, C), generator=gen) * completion_mask
    return RolloutBatch(
        input_ids=torch.cat([prompts, completions], 1),
        attention_mask=torch.cat([prompt_mask, completion_mask], 1),
        completion_mask=completion_mask,
        behaviour_logp=-torch.rand(n, C, generator=gen) * completion_mask,
        completions=[""] * n,
        prompt_width=P,
        group_size=3,
    )


def _parts(budget: int, packed: bool, whole_groups: bool = True, rows=None):
    ro = _rollouts()
    rows = torch.arange(9) if rows is None else rows
    return [p.tolist() for p in TokenMicroBatches(budget, lambda: packed)(rows, ro, whole_groups)]


def test_packed_budget_counts_each_prompt_once_and_real_completion_tokens():
    # group costs packed: 6 + 11 = 17, 4 + 8 = 12, 5 + 8 = 13
    assert _parts(30, packed=True) == [[0, 1, 2, 3, 4, 5], [6, 7, 8]]  # 17 + 12 = 29; 13
    assert _parts(17, packed=True) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # padded: each row costs the micro-batch's longest completion: 6 + 3 * 8 = 30 for group 0 alone
    assert _parts(30, packed=False) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # 30; 4 + 3 * 3; 5 + 3 * 5
    # a group over the budget is split by completions, its prompt counted in each part
    assert _parts(15, packed=True) == [[0], [1, 2], [3, 4, 5], [6, 7, 8]]  # 6 + 8; 6 + 3; 12; 13
    assert _parts(16, packed=True) == [[0, 1], [2], [3, 4, 5], [6, 7, 8]]  # 6 + 10; 6 + 1 (+ 12 > 16)
    # a run of the next group joins where it fits: rows 3-4 of group 1 after group 0 (17 + 4 + 6 = 27)
    assert _parts(27, packed=True, rows=torch.tensor([0, 1, 2, 3, 4]))[0] == [0, 1, 2, 3, 4]
    # per-row path (no shared prompt): every row costs the longest prompt + longest completion
    assert _parts(14, packed=False, whole_groups=False)[0] == [0]


def test_budget_errors_name_the_field():
    with pytest.raises(ValueError, match="module.learner.micro_batch_tokens must be >= 1"):
        TokenMicroBatches(-5)
    with pytest.raises(
        ValueError, match=r"module.learner.micro_batch_tokens=13 is smaller than one prompt \+ one"
    ):
        _parts(13, packed=True)  # prompt 6 + completion 8
    with pytest.raises(ValueError, match="at least 4136"):
        check_token_budget(4000, 4096, 40)
    with pytest.raises(ValueError, match="must be >= 1"):
        check_token_budget(0, None, 40)
    check_token_budget(4136, 4096, 40)


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
def test_token_budget_gives_the_fixed_size_gradient(tiny, pack):
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    batch = TrainBatch(ro, torch.linspace(-1.0, 1.0, 9))
    algo = GRPO(kl_coef=0.0, aggregation="token_mean")
    fixed, _ = _update(_learner(algo, micro_batch_size=9), model, batch)
    learner = _learner(algo, micro_batch_tokens=16, pack=pack)
    budget, _ = _update(learner, model, batch)
    assert len(fixed.losses) == 1 and len(budget.losses) >= 3  # several micro-batches, one optimizer step
    torch.testing.assert_close(sum(budget.losses), fixed.losses[0], rtol=1e-5, atol=1e-7)
    for name, grad in fixed.grads[0].items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(budget.grads[0][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_ranks_agree_on_micro_batches_and_spans(tiny):
    """This rank has 3 micro-batches of 1 span; the other 4 with 2, 1, 1, 1: pad spans, add an empty one."""
    model = tiny.model.train()
    ro = _rollouts(model.config.vocab_size)
    learner = _learner(GRPO(kl_coef=0.0), micro_batch_tokens=17, pack=True)
    other = torch.tensor([2, 1, 1, 1, 0, 0, 0, 0, 0])
    dist = FakeOps(world_size=2, other_maxes=[other])
    plan = learner.plan(torch.arange(9), ro, dist)
    assert dist.max_calls[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert [(p.tolist(), pad) for p, pad in plan] == [
        ([0, 1, 2], 1), ([3, 4, 5], 0), ([6, 7, 8], 0), ([], 1)
    ]  # fmt: skip
    # the update runs a backward for every planned micro-batch, the empty one too (all ranks: 4)
    dist = FakeOps(world_size=2, other_sums=[torch.tensor([9.0, 30.0])], other_maxes=[other])
    rec, metrics = _update(learner, model, TrainBatch(ro, torch.linspace(-1.0, 1.0, 9)), dist)
    assert len(rec.losses) == 4 and float(rec.losses[-1]) == 0.0 and len(rec.grads) == 1
    assert "train/loss" in metrics


def test_a_packed_token_budget_run_trains_like_the_padded_row_run(tmp_path):
    """fp32 tiny Llama, 2 steps with LongAct statistics: packed completions in micro-batches of 420 tokens
    (one group each) against padded completions in micro-batches of 4 rows (the default path)."""
    runs = {}
    for name, overrides in {
        "packed": ["module.logprobs.pack_completions=true", "module.learner.micro_batch_tokens=420"],
        "padded": ["module.logprobs.pack_completions=false", "module.learner.micro_batch_size=4"],
    }.items():
        d = tmp_path / name
        cfg = compose_train(
            d, PARITY, "data.max_prompt_tokens=400", "masking=saliency", "masking.calib_samples=1",
            "masking.refresh_every=1", *overrides,
        )  # fmt: skip
        run(cfg, d)
        with open(d / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
        runs[name] = (rows, load_hf(str(d / "final"), dtype="float32").model)
    (rows_a, model_a), (rows_b, model_b) = runs["packed"], runs["padded"]
    assert len(rows_a) == len(rows_b) == 2
    for a, b in zip(rows_a, rows_b):
        assert a["train/reward_mean"] == b["train/reward_mean"]
        for key in ("train/loss", "train/entropy", "train/kl", "train/grad_norm"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-7), key
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["module.learner.micro_batch_tokens=100"],
            r"module.learner.micro_batch_tokens=100 is smaller than one prompt",
        ),
        (["module.learner.micro_batch_tokens=-4"], "module.learner.micro_batch_tokens must be >= 1"),
        (
            ["module.logprobs.pack_completions=true", "module.logprobs.shared_prefix=false"],
            "needs module.logprobs.shared_prefix=true",
        ),
        (
            ["module.logprobs.pack_completions=maybe"],
            "module.logprobs.pack_completions must be true, false or auto",
        ),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises((ValueError, InstantiationException), match=message):
        run(compose_train(tmp_path, *overrides), tmp_path)
    assert not any(tmp_path.iterdir())
