from longact_pl.train import run
from tests.helpers import compose_train


def test_progress_bar_counts_steps_across_epochs(tmp_path, capsys):  # capsys is no terminal: in_files
    """3 steps over 2 epochs of 2 batches: the bar reads step 3/3, never ``Epoch 0/-2``."""
    cfg = compose_train(tmp_path, "data.reward._target_=tests.helpers.ParityReward", "trainer.max_steps=3",
                        "data.train.num_samples=4", "data.batch_size=2",
                        "callbacks.progress_bar.in_files=true")  # fmt: skip
    run(cfg, tmp_path)
    out = capsys.readouterr().out.replace("\r", "\n")
    assert "step: 100%" in out and "| 3/3 [" in out and "| 2/3 [" in out
    assert "Epoch" not in out
