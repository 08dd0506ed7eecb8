import pytest

from longact_pl.data.tasks.mixture import TaskMixture
from longact_pl.data.tasks.niah import NeedleInAHaystack
from longact_pl.data.tasks.variable_tracking import VariableTracking


def test_mixture_draws_tasks_by_seed_and_keeps_their_names(tokenizer):
    mix = TaskMixture([NeedleInAHaystack(), VariableTracking()])
    names = [mix.generate(256, seed=s, tokenizer=tokenizer).task for s in range(12)]
    assert set(names) == {"niah_single", "vt"}
    assert names == [mix.generate(256, seed=s, tokenizer=tokenizer).task for s in range(12)]


def test_mixture_zero_weight_excludes_a_task(tokenizer):
    mix = TaskMixture([NeedleInAHaystack(), VariableTracking()], weights=[0.0, 1.0])
    assert {mix.generate(256, seed=s, tokenizer=tokenizer).task for s in range(6)} == {"vt"}


def test_mixture_bad_weights():
    with pytest.raises(ValueError, match="one per task"):
        TaskMixture([NeedleInAHaystack()], weights=[1.0, 2.0])
