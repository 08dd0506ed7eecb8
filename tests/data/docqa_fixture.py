"""A small DocQA-format file written by tests: synthetic documents with known answers, two sources."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper"]


def document(index: int, sentences: int) -> tuple[str, str, str]:
    """(document, question, answer): a list of item codes; the question asks one of them."""
    lines = [
        f"The code of item {WORDS[k % len(WORDS)]}-{k} is {1000 + 37 * k + index}." for k in range(sentences)
    ]
    k = (index * 3) % sentences
    return (
        " ".join(lines),
        f"What is the code of item {WORDS[k % len(WORDS)]}-{k}?",
        str(1000 + 37 * k + index),
    )


def write_docqa(path: Path, rows: int = 4, sentences: int = 6, long_every: int = 2) -> Path:
    """Write ``rows`` DocQA rows (every ``long_every``-th with a 10x longer document; odd rows use chunks)."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            n = sentences * (10 if long_every and i % long_every == 1 else 1)
            doc, question, answer = document(i, n)
            row = {
                "id": f"r{i}",
                "question": question,
                "answers": [answer],
                "source": ["synth_a", "synth_b"][i % 2],
            }
            if i % 2:
                parts = doc.split(". ")
                row["chunks"] = [{"id": f"c{j}", "text": t} for j, t in enumerate(parts)]
                row["evidence"] = ["c0"]
            else:
                row["context"] = doc
            f.write(json.dumps(row) + "\n")
    return path
