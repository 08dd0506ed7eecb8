"""docs/memory.md's table is the plan's: regenerating it changes nothing."""

from longact_pl.memory.table import DOC, DROP_MARKERS, END, START, current, drop_table, table


def test_committed_tables_equal_the_regenerated_ones():
    text = DOC.read_text()
    assert START in text and END in text and all(m in text for m in DROP_MARKERS)
    assert current(text) == text, "run: python -m longact_pl.memory.table --write"


def test_table_covers_both_models_every_length_and_layout():
    rows = [line for line in table().splitlines()[2:]]
    assert len(rows) == 2 * 4
    assert all(line.count("|") == 8 for line in rows)
    assert "| Qwen3-4B | 32k |" in table() and "| Qwen3-8B | 64k |" in table()


def test_drop_table_shows_before_and_after_for_every_layout():
    rows = drop_table().splitlines()[2:]
    assert len(rows) == 2 * 4 and all(line.count("->") == 4 for line in rows)
    q4_32k = next(line for line in rows if line.startswith("| Qwen3-4B | 32k |"))
    before, after = (float(x) for x in q4_32k.split("|")[5].split("(")[0].split("->"))  # FSDP x8
    assert before - after > 8  # GiB: the two-pass switch's hold is gone
