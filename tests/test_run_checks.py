"""Issue 22: option combinations and inputs refused before the run folder or a model is touched, naming the
field and the fix; cut prompts said once with counts."""

import logging

import pytest
from hydra.utils import instantiate

from longact_pl.algos.correction import RolloutCorrection
from longact_pl.algos.correction_weights import Mask, SequenceProduct
from longact_pl.data.fit_check import check_prompt_fit
from longact_pl.guards import MaskedOutError, SafetyStops
from longact_pl.train import run
from tests.helpers import FakeOps, compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"


def test_sequence_parallel_with_the_single_strategy_names_strategy_fsdp(tmp_path, no_model_load):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"sequence_parallel_size=2 needs strategy=fsdp"):
        run(compose_train(run_dir, "trainer.strategy.sequence_parallel_size=2"), run_dir)
    assert not run_dir.exists()
    trainer = instantiate(compose_train(run_dir).trainer, logger=False)  # the default still builds
    assert type(trainer.strategy).__name__ == "SingleDeviceStrategy"


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"high": 0.5}, r"\[2, 0\.5\] \(1/correction\.high=2 \(low unset\)"),  # low = 1/high > high
        (
            {"high": 0.5, "low": 0.5},
            r"\[0\.5, 0\.5\] \(correction\.low=0\.5",
        ),  # conf/correction/sequence_mask
        ({"high": 3.0, "low": 1.5}, r"does not contain 1"),
    ],
)
def test_mask_bounds_are_checked_as_they_act(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        RolloutCorrection(level=SequenceProduct(), mode=Mask(), **kwargs)


def test_reject_bounds_that_reject_a_perfect_sampler_are_refused():
    with pytest.raises(ValueError, match=r"reject_low=1\.5 .*reject every ratio of 1"):
        RolloutCorrection(reject_low=1.5)
    RolloutCorrection(
        level=SequenceProduct(), mode=Mask(), low=0.5, high=2.0, reject_low=0.1, reject_high=10.0
    )


def test_the_shipped_sequence_mask_with_high_below_one_fails_before_the_model(tmp_path, no_model_load):
    from hydra.errors import InstantiationException

    with pytest.raises(
        InstantiationException, match=r"correction\.mode=mask keeps weights in \[0\.5, 0\.5\]"
    ):
        run(
            compose_train(
                tmp_path / "run", "rollout=vllm", "correction=sequence_mask", "correction.high=0.5"
            ),
            tmp_path / "run",
        )
    assert not (tmp_path / "run").exists()


def test_steps_with_every_token_masked_out_stop_the_run_with_a_checkpoint():
    stops, saved = SafetyStops(max_masked_out_steps=2), []
    save = lambda name: saved.append(name) or name  # noqa: E731
    stops.check_masked_out(1.0, FakeOps(), save)
    stops.check_masked_out(0.5, FakeOps(), save)  # a step that kept tokens ends the streak
    stops.check_masked_out(1.0, FakeOps(), save)
    stops.check_masked_out(None, FakeOps(), save)  # no active correction: never counted
    stops.check_masked_out(1.0, FakeOps(), save)
    with pytest.raises(MaskedOutError, match=r"masked out every completion token of 2 RL steps in a row"):
        stops.check_masked_out(1.0, FakeOps(), save)
    assert saved == ["masked_out.ckpt"]
    assert stops.state_dict()["masked_out_total"] == 4


def _datamodule(tmp_path, *overrides):
    from longact_pl.models.tiny import tiny_llama

    loaded = tiny_llama(max_len=300)
    cfg = compose_train(tmp_path, *overrides)
    return loaded.model, instantiate(cfg.data, tokenizer=loaded.tokenizer)


def test_prompts_cut_by_max_prompt_tokens_are_said_once_with_counts(tmp_path, caplog):
    model, dm = _datamodule(tmp_path, "data.max_prompt_tokens=100", "data.train.num_samples=10")
    with caplog.at_level(logging.WARNING, logger="longact_pl"):
        check_prompt_fit(dm, model, 8)
    cuts = [r.getMessage() for r in caplog.records if "cuts prompts" in r.getMessage()]
    assert len(cuts) == 1
    assert (
        "data.max_prompt_tokens=100" in cuts[0]
        and "data.train: 10 of 10 prompts (target lengths [256])" in cuts[0]
    )
    assert "data.val: 2 of 2 prompts (target lengths [256])" in cuts[0]
    caplog.clear()
    model, dm = _datamodule(tmp_path, "data.train.num_samples=10")  # 4096: nothing cut, nothing said
    with caplog.at_level(logging.WARNING, logger="longact_pl"):
        check_prompt_fit(dm, model, 8)
    assert not [r for r in caplog.records if "cuts prompts" in r.getMessage()]


def test_prompts_beyond_the_model_window_fail_at_start_naming_the_fix(tmp_path):
    model, dm = _datamodule(tmp_path, "data.train.lengths=[512]", "data.train.num_samples=4")
    with pytest.raises(ValueError, match=r"data\.train has prompts of \d+ tokens .*"
                       r"max_position_embeddings=300.*"
                       r"data\.max_prompt_tokens <= 292"):  # fmt: skip
        check_prompt_fit(dm, model, 8)
    model, dm = _datamodule(tmp_path, "data.train.lengths=[512]", "data.max_prompt_tokens=280")
    check_prompt_fit(dm, model, 8)  # cut to fit: allowed (and said)


def test_a_run_beyond_the_window_touches_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"max_position_embeddings=200"):
        run(compose_train(run_dir, PARITY, "+model.max_len=200"), run_dir)
    assert not run_dir.exists()
