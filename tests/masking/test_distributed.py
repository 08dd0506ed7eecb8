"""The new LongAct statistics under FSDP2 (2 CPU ranks, gloo) against one process on the same global batch.

Post-RoPE pair magnitudes, joint Q-K units and a refresh after every step (which lets rows enter, so the
warm start of their sharded Adam moments runs) must give every rank the single-process masks and weights.
"""

import csv

import pytest
import torch

from tests.test_distributed import _train

NEW = [
    "trainer.max_steps=3",
    "masking.refresh_every=1",
    "masking.ema=0.0",
    "masking/unit=rope_pair",
    "masking.measure_at=post_rope",
    "masking.pairing=joint",
]


def _telemetry(run_dir):
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mask/grad_share_kept")]
    return [
        (
            float(r["mask/grad_share_kept"]),
            float(r["mask/entered_rows"] or 0),
            float(r["mask/update_share_removed"]),
        )
        for r in rows
    ]


@pytest.mark.slow
def test_fsdp_ranks_match_one_process_with_post_rope_joint_pairs_and_refresh(tmp_path):
    (single,) = _train(tmp_path / "single", "data.batch_size=4", *NEW)
    ranks = _train(tmp_path / "fsdp", "strategy=fsdp", "trainer.devices=2", "data.batch_size=2", *NEW)
    for name, mask in single["masks"].items():
        assert torch.equal(ranks[0]["masks"][name], mask) and torch.equal(ranks[1]["masks"][name], mask)
    for key, value in single["weights"].items():
        torch.testing.assert_close(ranks[0]["weights"][key], value, atol=2e-6, rtol=1e-4, msg=key)
    one, two = _telemetry(tmp_path / "single"), _telemetry(tmp_path / "fsdp")
    assert len(one) == 3 and any(entered > 0 for _, entered, _ in one[:2])  # rows entered before step 3
    for (share_1, entered_1, removed_1), (share_2, entered_2, removed_2) in zip(one, two):
        assert share_2 == pytest.approx(share_1, rel=1e-5) and entered_1 == entered_2
        assert 0 < removed_1 < 1 and removed_2 == pytest.approx(removed_1, rel=1e-4)  # global, not one rank's
