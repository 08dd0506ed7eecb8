"""Bad field types and values fail before a model is loaded or a file written, naming the field."""

import pytest
from omegaconf import OmegaConf

from longact_pl.config_check import check_combinations, check_types
from longact_pl.eval.runner import run as run_eval
from longact_pl.train import run
from tests.eval.helpers import compose_eval
from tests.helpers import compose_train

PARITY = "data.reward._target_=tests.helpers.ParityReward"


@pytest.mark.parametrize(
    "override,error,expected",
    [
        ("module.optimizer.lr=abc", TypeError, "module.optimizer.lr must be a float, got 'abc'"),
        (
            "module.learner.micro_batch_size=2.5",
            TypeError,
            "module.learner.micro_batch_size must be an int, got 2.5",
        ),
        (
            "algo=dapo algo.overlong_cache_len=2.5",
            TypeError,
            "algo.overlong_cache_len must be an int, got 2.5",
        ),
        ("data.batch_size=two", TypeError, "data.batch_size must be an int, got 'two'"),
        ("data.train.lengths=[512,abc]", TypeError, "data.train.lengths must be a list of int"),
        ("trainer.max_steps=0", ValueError, "trainer.max_steps must be >= 1"),
        ("trainer.max_steps=-5", ValueError, "trainer.max_steps must be >= 1"),
        ("trainer.max_steps=-1", ValueError, "trainer.max_steps must be >= 1 .*max_epochs unbounded"),
    ],
)
def test_bad_field_fails_before_the_model_loads(tmp_path, no_model_load, override, error, expected):
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=expected):
        run(compose_train(run_dir, *override.split()), run_dir)
    assert not run_dir.exists()


SP = "trainer.strategy.sequence_parallel_size"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["strategy=ddp", "trainer.devices=2", f"{SP}=2"], f"{SP}=2 needs strategy=fsdp .* or {SP}=1"),
        (["strategy=fsdp", "trainer.devices=3", f"{SP}=2"], rf"{SP}=2 must divide the world size \(3.*=1"),
        (["strategy=fsdp", f"{SP}=0"], f"{SP} must be >= 1, got 0"),
        (
            ["module.logprobs.pack_completions=true", "module.logprobs.shared_prefix=false"],
            "needs module.logprobs.shared_prefix=true",
        ),
        (["module.learner.micro_batch_tokens=100"], "micro_batch_tokens=100 is smaller .* raise it to at"),
        (["module.learner.ppo_epochs=0"], "module.learner.ppo_epochs must be >= 1"),
        (["module.learner.mini_batch_size=-2"], "module.learner.mini_batch_size must be >= 0"),
        (["module.learner.micro_batch_size=0"], "module.learner.micro_batch_size must be >= 1"),
        (["module.logprobs.chunk_size=0"], "module.logprobs.chunk_size must be >= 1 or null"),
        (["module.logprobs.pack_completions=maybe"], "pack_completions must be true, false or auto"),
        (["correction=token_tis"], "corrects an external sampler's mismatch.*rollout=vllm or correction="),
        (["rollout.top_p=0.9"], "training needs top_p=1.0 and top_k=0"),
        (
            ["rollout.mode=async", "correction=token_tis", "strategy=fsdp"],
            "rollout.mode=async keeps a full copy .* use strategy=ddp",
        ),
        (
            ["rollout.mode=async", "correction=token_tis", "strategy=fsdp", "trainer.devices=2", f"{SP}=2"],
            "rollout.mode=async keeps a full copy .* rollout.mode=sync",
        ),
        (
            ["masking=saliency", "masking.norms=frozen", "masking.targets=[gate_proj]"],
            r"masking.norms=frozen needs q_proj/k_proj among masking.targets .*masking.norms=dense",
        ),
    ],
    ids=[
        "sp-ddp", "sp-world", "sp-zero", "pack-no-shared", "token-budget", "epochs", "mini-batch",
        "micro-batch", "chunk", "pack-value", "correction-hf", "top-p", "async-fsdp", "async-sp",
        "norms-frozen",
    ],
)  # fmt: skip
def test_unsupported_combinations_are_refused_before_anything(tmp_path, no_model_load, overrides, expected):
    """The pure check refuses each (nothing built), and ``run`` stops there: no run directory, no model."""
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, PARITY, *overrides)
    with pytest.raises(ValueError, match=expected):
        check_combinations(cfg)
    with pytest.raises(ValueError, match=expected):
        run(cfg, run_dir)
    assert not run_dir.exists()


def test_supported_combinations_pass(tmp_path):
    for overrides in (
        ["strategy=fsdp", "trainer.devices=4", f"{SP}=2", "algo.entropy_coef=0.01"],
        [
            "module.logprobs.pack_completions=true",
            "module.learner.micro_batch_tokens=100000",
            "module.learner.micro_batch_size=1",
        ],
        [
            "module.logprobs.shared_prefix=false",
            "module.logprobs.pack_completions=auto",
            "module.logprobs.chunk_size=null",
        ],
        ["rollout.mode=async", "correction=token_tis", "strategy=ddp", "trainer.devices=2"],
    ):
        check_combinations(compose_train(tmp_path, *overrides))


def test_a_scalar_where_a_list_is_expected_becomes_a_one_element_list(tmp_path):
    cfg = compose_train(tmp_path, "data.train.lengths=1024", "data.val.lengths=512")
    check_types(cfg)
    assert cfg.data.train.lengths == [1024] and cfg.data.val.lengths == [512]
    assert OmegaConf.to_container(cfg.module, resolve=True)["validation"]["lengths"] == [
        512
    ]  # interpolation follows
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    lengths = ["data.train.lengths=256", "data.val.lengths=256"]
    run(
        compose_train(train_dir, PARITY, *lengths, "trainer.max_steps=1", "trainer.val_check_interval=1"),
        train_dir,
    )
    assert "val/acc/256" in (train_dir / "metrics.csv").read_text()
    summary = run_eval(compose_eval(eval_dir, "eval.lengths=512", "eval.n=1", "eval.only=[vt]",
                                    "eval.tasks.vt.max_new_tokens=2"), eval_dir)  # fmt: skip
    assert summary["lengths"] == [512]


def test_every_shipped_config_passes_the_type_check(tmp_path):
    """No false alarms on the configs we ship (each option of each group, defaults elsewhere)."""
    from tests.helpers import CONF

    for group in ("algo", "rollout", "masking", "model", "data", "strategy", "logger"):
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            extra = ["data.train.path=x.jsonl"] if (group, option) == ("data", "jsonl") else []
            extra += ["model.name_or_path=x"] if (group, option) == ("model", "hf") else []
            check_types(compose_train(tmp_path, f"{group}={option}", *extra, tiny=False))
    check_types(compose_eval(tmp_path, "eval=ruler"))
    check_types(compose_eval(tmp_path, "eval=longbench_v2", "eval.path=x.json"))
