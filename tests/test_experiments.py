"""Every experiment preset composes, resolves and carries the settings it promises."""

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import CONF, compose_train

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PAPER = {"paper_qwen3_8b_dapo": ("dapo", 16), "paper_qwen3_4b_grpo": ("grpo", 8)}
# keys every preset must leave resolvable (the run needs them before anything is loaded)
REQUIRED = ["algo._target_", "rollout.group_size", "rollout.max_new_tokens", "module.optimizer.lr",
            "trainer.max_steps",
            "trainer.val_check_interval", "data.batch_size", "data.train.lengths", "data.val._target_",
            "module.validation.lengths", "model._target_", "seed"]  # fmt: skip


def _compose(tmp_path, name, *overrides):
    return compose_train(tmp_path, f"experiment={name}", *overrides, tiny=False)


def test_the_presets_exist():
    assert {"cpu_longact", *PAPER} <= set(PRESETS)
    for name in PRESETS:
        assert (CONF / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_resolves(tmp_path, name):
    cfg = _compose(tmp_path, name)
    # only the model path may be left for the command line
    assert set(OmegaConf.missing_keys(cfg)) <= {"model.name_or_path"}
    if OmegaConf.missing_keys(cfg):
        cfg = _compose(tmp_path, name, "model.name_or_path=/models/some-qwen3")
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    for key in REQUIRED:
        assert OmegaConf.select(OmegaConf.create(resolved), key) is not None, key
    # the cheap components are valid as configured (bad values fail here, before any model load)
    instantiate(cfg.algo)
    instantiate(cfg.rollout)
    if "_target_" in cfg.masking:
        instantiate(cfg.masking)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets(tmp_path, name):
    algo, group = PAPER[name]
    cfg = _compose(tmp_path, name, "model.name_or_path=Qwen/Qwen3-8B")
    assert cfg.model._target_ == "longact_pl.models.hf.load_hf" and cfg.model.dtype == "float32"
    assert cfg.model.gradient_checkpointing is True
    assert cfg.algo.name == algo
    assert cfg.masking._target_ == "longact_pl.masking.SaliencyMask"
    assert cfg.masking.selector._target_.endswith(".TopK") and cfg.masking.ratio == 0.3
    assert cfg.masking.targets == ["q_proj", "k_proj"]
    assert cfg.module.optimizer.lr == 1e-6 and cfg.rollout.group_size == group
    assert min(cfg.data.train.lengths) >= 16384 and max(cfg.data.train.lengths) == 32768
    assert cfg.data.max_prompt_tokens >= 32768
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    # what a GPU user needs: vLLM rollouts with TIS, token-budget micro-batches of whole packed groups
    assert cfg.rollout._target_.endswith("VLLMRollout") and cfg.rollout.sleep_level == 1
    assert (
        cfg.correction.level._target_.endswith(".TokenRatio")
        and cfg.correction.mode._target_.endswith(".Truncate")
        and cfg.correction.high == 2.0
    )
    assert cfg.rollout.max_model_len >= cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    assert cfg.module.learner.micro_batch_tokens >= cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    assert cfg.module.logprobs.shared_prefix and cfg.module.logprobs.pack_completions == "auto"
    if (CONF / "strategy" / "fsdp.yaml").is_file():
        assert "fsdp" in str(cfg.trainer.strategy).lower()


def test_cpu_preset_is_smollm2_grpo_on_the_default_task(tmp_path):
    cfg = _compose(tmp_path, "cpu_longact")
    default = compose_train(tmp_path, tiny=False)
    assert cfg.model._target_ == "longact_pl.models.smollm2.load_smollm2"
    assert cfg.algo.name == "grpo"
    assert cfg.data.train.task == default.data.train.task  # the default long-context task
    assert cfg.trainer.accelerator == "cpu" and cfg.masking.selector._target_.endswith(".TopK")
    # 9 runs (3 maskings x 3 seeds) in ~2 h on 2 cores: at most the `make train` run's work (~15 min) each
    assert cfg.trainer.max_steps <= default.trainer.max_steps
    val_passes = 1 + cfg.trainer.max_steps // cfg.trainer.val_check_interval
    default_passes = 1 + default.trainer.max_steps // default.trainer.val_check_interval
    assert val_passes * cfg.data.val.num_samples <= default_passes * default.data.val.num_samples


@pytest.mark.parametrize("masking,selector", [("random", "RandomK"), ("inverse", "BottomK"), ("none", None)])
def test_cpu_preset_masking_stays_overridable(tmp_path, masking, selector):
    cfg = _compose(tmp_path, "cpu_longact", f"masking={masking}")
    if selector is None:
        assert "_target_" not in cfg.masking and dict(cfg.masking) == {}
    else:
        assert cfg.masking.selector._target_.endswith(f".{selector}")


def test_cpu_v2_preset_has_headroom_an_untrained_family_and_paired_arms(tmp_path):
    cfg = _compose(tmp_path, "cpu_longact_v2")
    assert cfg.model._target_ == "longact_pl.models.smollm2.load_smollm2" and cfg.trainer.accelerator == "cpu"
    assert cfg.masking.selector._target_.endswith(".TopK")
    fitting, general = cfg.data.val.sources
    # A: the trained family at the trained length, >= 64 unseen prompts
    assert fitting.task == cfg.data.train.task and cfg.data.train.task.num_keys == 8
    assert fitting.num_samples >= 64 and fitting.lengths == cfg.data.train.lengths
    # B: another task, longer than anything trained on
    assert general.task != cfg.data.train.task and min(general.lengths) > max(cfg.data.train.lengths)
    assert cfg.data.max_prompt_tokens > max(general.lengths)  # nothing is truncated
    # fixed held-out seeds, never a training seed; the training order follows the run's seed
    assert {fitting.seed, general.seed}.isdisjoint({0, 1, 2}) and cfg.data.train.seed == cfg.seed
    assert cfg.data.seed == cfg.seed and cfg.masking.seed == cfg.seed
    assert list(cfg.module.validation.lengths) == sorted({*fitting.lengths, *general.lengths})
    # the end is validated in every run, step 0 only in the dense seed-0 run (lent to the others)
    assert cfg.trainer.max_steps % cfg.trainer.val_check_interval == 0
    runs = [(m, s) for m in ("saliency", "random", "none") for s in (0, 1)]
    step0 = {(m, s): _compose(tmp_path, "cpu_longact_v2", f"masking={m}", f"seed={s}") for m, s in runs}
    step0 = {k: c.validate_before_training for k, c in step0.items()}
    assert [k for k, v in step0.items() if v] == [("none", 0)]
    random = _compose(tmp_path, "cpu_longact_v2", "masking=random")
    assert random.masking.selector._target_.endswith(".RandomK") and random.masking.ratio == cfg.masking.ratio
    assert "_target_" not in _compose(tmp_path, "cpu_longact_v2", "masking=none").masking
