"""``bench_peer.py``'s training-pass line: the ratio of both sides' passes against the token-count limit."""

import pytest

from tests.helpers import ROOT


@pytest.fixture
def peer(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts" / "bench"))
    import bench_peer

    return bench_peer


def test_training_pass_line_against_the_token_count_limit(peer, capsys):
    setting = {"prompt": 2048, "group": 8, "new": 64}
    ours = {"train forward": 1.0, "train backward": 2.0, "optimizer step": 0.05}
    trl = {"train forward": 3.0, "train backward": 9.0, "optimizer step": 0.07}
    line = peer.training_pass_line({"ours": (5.0, ours), "trl": (20.0, trl)}, setting)
    # TRL runs G(P+C) = 16896 tokens a group, ours P+GC = 2560: a limit of 6.6x; the passes: 12 s / 3 s = 4x
    assert "4.00x TRL; token-count limit G(P+C)/(P+GC) = 6.60x (61% of it)" in line
    assert "optimizer step ours 0.050 s vs TRL 0.070 s" in line
    assert capsys.readouterr().out == line + "\n"
