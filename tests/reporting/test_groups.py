import pytest

from longact_pl.reporting.collect import RunRecord
from longact_pl.reporting.groups import algo_name, group_runs, masking_name, stat
from longact_pl.reporting.summary import RunSummary, summarize
from tests.reporting.synthetic import config


def _run(tmp_path, name, seed, masking, ratio=0.3):
    path = tmp_path / name
    return RunRecord(path=path, config=config(path, seed, masking, ratio), rows=[])


def test_option_names_from_resolved_config(tmp_path):
    for masking in ("saliency", "random", "inverse", "none"):
        assert masking_name(config(tmp_path, 0, masking)) == masking
    assert algo_name({"algo": {"_target_": "longact_pl.algos.dr_grpo.DrGRPO"}}) == "dr_grpo"  # older runs
    target = "longact_pl.algos.algorithm.GroupPolicyGradient"
    assert algo_name({"algo": {"_target_": target, "name": "gspo"}}) == "gspo"
    assert algo_name({"algo": {"_target_": "my.pkg.PPO"}}) == "ppo"


def test_seeds_share_a_cell_and_other_settings_split_it(tmp_path):
    runs = [_run(tmp_path, f"r{s}_{ratio}", s, "saliency", ratio) for s in (0, 1) for ratio in (0.1, 0.3)]
    runs.append(_run(tmp_path, "dense", 0, "none"))
    groups = group_runs(runs)
    cells = {(k.algo, k.masking, k.variant): sorted(r.path.name for r in v) for k, v in groups.items()}
    assert cells == {
        ("grpo", "none", ""): ["dense"],
        ("grpo", "saliency", "masking.ratio=0.1"): ["r0_0.1", "r1_0.1"],
        ("grpo", "saliency", "masking.ratio=0.3"): ["r0_0.3", "r1_0.3"],
    }


def test_logging_and_checkpoint_settings_do_not_split_a_cell(tmp_path):
    a, b = _run(tmp_path, "a", 0, "saliency"), _run(tmp_path, "b", 1, "saliency")
    b.config["logger"] = {"wandb": {"project": "other"}}
    b.config["callbacks"] = {"step_log": {"every_n": 5}, "model_checkpoint": {"every_n_train_steps": 3}}
    (key,) = group_runs([a, b])
    assert key.variant == ""
    b.config["module"] = {"optimizer": {"lr": 1.0}}  # a real setting still splits
    assert len(group_runs([a, b])) == 2


def test_stat_is_sample_std_and_skips_missing():
    s = stat([1.0, None, 2.0, 3.0, float("nan")])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert stat([0.5]).std is None and stat([None]) is None


def test_summary_reads_step0_and_last_validation(tmp_path):
    rows = [
        {"step": 0.0, "val/acc": 0.1, "val/acc/256": 0.1},
        {"step": 0.0, "train/reward_mean": 0.2},
        {"step": 0.0, "val/acc": 0.3, "val/acc/256": 0.3},
        {"step": 1.0, "train/reward_mean": 0.4},
        {"step": 1.0, "val/acc": 0.5, "val/acc_256": 0.5},
    ]
    s: RunSummary = summarize(RunRecord(tmp_path, {}, rows), last_k=1)
    assert (s.val_start, s.val_final, s.final_reward) == (0.1, 0.5, 0.4)
    assert s.acc_by_length == {256: 0.5} and s.start_by_length == {256: 0.1}
    assert s.reward_curve == {0: 0.2, 1: 0.4}
    no_start = summarize(RunRecord(tmp_path, {}, rows[1:]), last_k=5)
    assert no_start.val_start is None and no_start.final_reward == pytest.approx(0.3)
