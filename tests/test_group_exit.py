"""A process group a run created is closed at its end, its gloo threads settled; a caller's stays open."""

import pytest
import torch.distributed as dist

from longact_pl.group_exit import process_group_closed_at_end


def _gloo_group(tmp_path, name: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / name}", rank=0, world_size=1)


def test_the_process_group_a_run_created_is_destroyed_when_it_ends_even_on_error(tmp_path):
    with process_group_closed_at_end():
        _gloo_group(tmp_path, "a")
        assert dist.is_initialized()
    assert not dist.is_initialized()  # the run's group: closed, so exit cannot abort in its threads
    with pytest.raises(RuntimeError, match="boom"), process_group_closed_at_end():
        _gloo_group(tmp_path, "b")
        raise RuntimeError("boom")
    assert not dist.is_initialized()


def test_a_process_group_that_existed_before_the_run_is_left_open(tmp_path):
    _gloo_group(tmp_path, "c")
    try:
        with process_group_closed_at_end():
            pass
        assert dist.is_initialized()  # the caller's group: theirs to close
    finally:
        dist.destroy_process_group()
