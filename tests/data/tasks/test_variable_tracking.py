import re

import pytest

from longact_pl.data.tasks.variable_tracking import VariableTracking


def test_chain_is_complete_and_in_order(tokenizer):
    sample = VariableTracking(num_chains=3, num_hops=4).generate(1024, seed=7, tokenizer=tokenizer)
    value = re.search(r"assigned the value (\d{5}) in the text above", sample.prompt).group(1)
    names = sample.references
    assert len(names) == 5 and len(set(names)) == 5
    # VAR n0 = value, then VAR n1 = VAR n0, ... appear in this order.
    positions = [sample.prompt.index(f"VAR {names[0]} = {value}.")]
    positions += [sample.prompt.index(f"VAR {names[j + 1]} = VAR {names[j]}.") for j in range(4)]
    assert positions == sorted(positions)
    # 3 chains x 5 statements; distractor chains start from other values.
    assert len(re.findall(r"VAR [A-Z]{5} = ", sample.prompt)) == 15
    starts = re.findall(r"VAR [A-Z]{5} = (\d{5})\.", sample.prompt)
    assert len(starts) == 3 and len(set(starts)) == 3 and value in starts
    assert sample.meta["answer_prefix"].startswith("Answer: According to the chain(s)")
    assert f"5 variables are assigned the value {value}" in sample.meta["answer_prefix"]


def test_bad_depth_list_is_rejected():
    with pytest.raises(ValueError, match="depth lists 2 fractions but there are 5 needles"):
        VariableTracking(num_hops=4, depth=[0.1, 0.2])
