"""docs/memory.md's table is the plan's: regenerating it changes nothing."""

from longact_pl.memory.table import DOC, END, START, replace_table, table


def test_committed_table_equals_the_regenerated_one():
    text = DOC.read_text()
    assert START in text and END in text
    assert replace_table(text, table()) == text, "run: python -m longact_pl.memory.table --write"


def test_table_covers_both_models_every_length_and_layout():
    rows = [line for line in table().splitlines()[2:]]
    assert len(rows) == 2 * 4
    assert all(line.count("|") == 9 for line in rows)
    assert "| Qwen3-4B | 32k |" in table() and "| Qwen3-8B | 64k |" in table()
