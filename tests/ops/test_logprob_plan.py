"""The log-prob plan: chosen once from the options and the model, frozen, with the reason in words."""

import dataclasses
import inspect
import logging
import typing

import pytest
import torch

from longact_pl.models.tiny import tiny_llama, tiny_qwen3
from longact_pl.ops import logprob_plan
from longact_pl.ops.logprob_plan import LogprobPlan, plan_logprobs
from longact_pl.ops.policy_logprobs import (
    IMPLEMENTATIONS,
    LogprobCall,
    LogprobPass,
    per_row_pass,
    shared_pass,
    sp_per_row_pass,
    sp_shared_pass,
)
from tests.ops.test_shared_prefix import C, _batch


@pytest.mark.parametrize(
    ("options", "path", "words"),
    [
        ({"shared_prefix": True, "pack_completions": True}, "packed", "packed in one row"),
        ({"shared_prefix": True, "pack_completions": "auto"}, "packed", "packed in one row"),
        ({"shared_prefix": True, "pack_completions": False}, "padded", "completions padded"),
        ({"shared_prefix": False, "pack_completions": "auto"}, "per_row", "logprobs.shared_prefix is off"),
    ],
)
def test_the_plan_follows_the_options_and_says_why(options, path, words):
    plan = plan_logprobs(tiny_llama(seed=0).model, chunk_size=4, entropy_grad=True, **options)
    assert plan.path == path and words in plan.reason
    assert plan.kernel == "sdpa" and plan.reason.endswith("attention sdpa")
    assert plan.chunk_size == 4 and plan.entropy_grad
    assert plan.shared == (path != "per_row") and plan.pack == (path == "packed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.path = "per_row"  # chosen once: nothing flips it at run time


def test_the_kernel_is_the_models_attention_implementation():
    model = tiny_qwen3(seed=0).model
    model.config._attn_implementation = "eager"
    assert plan_logprobs(model).kernel == "eager"


def test_the_plan_is_made_once_and_calls_never_check_the_model_again(monkeypatch):
    """Every call runs the planned implementation; the model checks ran at planning only."""
    model = tiny_llama(seed=0).model.eval()
    checks = []
    for name in ("check_shared_prefix", "packing_unsupported"):
        real = getattr(logprob_plan, name)
        monkeypatch.setattr(
            logprob_plan, name, lambda m, real=real, name=name: checks.append(name) or real(m)
        )
    lp = LogprobPass.for_model(model, pack_completions="auto")
    assert checks == ["check_shared_prefix", "packing_unsupported"]
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        first = lp(model, LogprobCall(ids, mask, C))[0]
        second = lp(model, LogprobCall(ids, mask, C))[0]
    assert torch.equal(first, second) and len(checks) == 2 and lp.plan.path == "packed"


def test_packing_required_on_a_model_that_cannot_pack_is_refused_when_planned():
    """``pack_completions=true`` with flash attention: refused at configuration, before any forward."""
    model = tiny_llama(seed=0).model
    model.config._attn_implementation = "flash_attention_2"  # not installed here: never run
    forwards = []
    model.register_forward_pre_hook(lambda *a: forwards.append(1))
    with pytest.raises(
        ValueError, match=r"pack_completions=true, but this model cannot pack.*flash_attention_2"
    ):
        LogprobPass.for_model(model, shared_prefix=True, pack_completions=True)
    assert forwards == []


def test_a_model_without_the_shared_prompt_refuses_required_packing_and_falls_back_otherwise(caplog):
    model = tiny_qwen3(seed=0).model
    model.config.use_sliding_window = True
    with pytest.raises(ValueError, match="cannot pack completions: the shared prompt is unavailable"):
        plan_logprobs(model, pack_completions=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan = plan_logprobs(model, chunk_size=8, pack_completions="auto")
    assert plan.path == "per_row" and "full-attention" in plan.reason
    assert [r.message.count("one row at a time") for r in caplog.records] == [1]  # one warning, no pack one


def test_a_head_that_cannot_be_chunked_plans_the_models_own_head(caplog):
    model = tiny_llama(seed=0).model
    model.lm_head = torch.nn.Sequential(model.lm_head)  # not a plain nn.Linear
    with caplog.at_level(logging.WARNING):
        plan = plan_logprobs(model, shared_prefix=False, chunk_size=8)
    assert plan.chunk_size is None and "own LM head" in plan.reason
    assert sum("chunked LM head unavailable" in r.message for r in caplog.records) == 1


def test_every_path_has_one_signature_and_a_sequence_parallel_variant():
    impls = {fn for pair in IMPLEMENTATIONS.values() for fn in pair}
    assert impls == {per_row_pass, sp_per_row_pass, shared_pass, sp_shared_pass}
    assert {tuple(inspect.signature(fn).parameters) for fn in impls} == {
        ("model", "call", "plan", "hook", "sp")
    }
    assert set(IMPLEMENTATIONS) == set(typing.get_args(logprob_plan.Path))


def test_a_per_row_pass_with_no_rows_returns_no_rows():
    model = tiny_llama(seed=0).model
    lp = LogprobPass(LogprobPlan("per_row", "sdpa"))
    ids, mask = _batch(model.config.vocab_size)
    logp, entropy = lp(model, LogprobCall(ids[:0], mask[:0], C, with_entropy=True))
    assert logp.shape == entropy.shape == (0, C)


def test_the_packed_kernel_is_chosen_for_the_training_device(monkeypatch):
    monkeypatch.setattr("longact_pl.ops.attention_kernels.flash_attn_available", lambda: False)
    plan = plan_logprobs(tiny_llama(seed=0).model, pack_completions=True)
    assert plan.packed_kernel is None  # not chosen before the device is known
    cpu, cuda = plan.on_device("cpu"), plan.on_device(torch.device("cuda", 0))
    assert (cpu.packed_kernel, cuda.packed_kernel) == ("sdpa_mask", "flex")
    assert "packed kernel flex" in cuda.reason and cuda.path == plan.path == "packed"
    padded = plan_logprobs(tiny_llama(seed=0).model, pack_completions=False)
    assert padded.on_device("cuda") is padded  # no packed pass, nothing to choose


def test_the_pass_runs_the_planned_packed_kernel(monkeypatch):
    from longact_pl.ops.packed import PackedCall

    seen, original = [], PackedCall.build.__func__

    def spy(cls, *args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("kernel"))  # the kernel argument
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PackedCall, "build", classmethod(spy))
    model = tiny_llama(seed=0).model
    lp = LogprobPass.for_model(model, pack_completions=True).on_device("cpu")
    ids, mask = _batch(model.config.vocab_size)
    planned, _ = lp(model, LogprobCall(ids, mask, C))  # [n, C]
    unplanned, _ = LogprobPass.for_model(model, pack_completions=True)(model, LogprobCall(ids, mask, C))
    assert seen == ["sdpa_mask", None]
    assert torch.equal(planned, unplanned)  # on CPU the call-time choice is the same kernel
