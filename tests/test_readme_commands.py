"""Every command in the README and in ``docs/*.md`` composes and passes the fast checks.

The commands are read from the documents themselves (shell code blocks, ``\\`` continuations joined), so a
command added or changed there is tested as written. Each ``train.py`` / ``evaluate.py`` /
``python -m longact_pl.premise`` command is composed with Hydra; a multirun's swept values are each composed
at least once. Then the checks a real run does before loading a model run too: field types, the step limit,
and building the cheap components (algorithm, rollout engine, callbacks) for ``train.py``; field types and
the rollout engine for ``evaluate.py``; field types and the ``premise:`` options for the premise run.
``hydra/...`` and ``hydra.*`` overrides choose launchers (optional plugins) and are left out. Placeholders
such as ``<run>`` stay as text (nothing is loaded). Every ``scripts/...`` file a command names must exist.
"""

import itertools
import re
import shlex
from pathlib import Path
from typing import NamedTuple

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from longact_pl.config_check import check_types
from longact_pl.premise.options import PremiseOptions
from longact_pl.train import build_light, check_config
from tests.helpers import CONF, ROOT

# script file name -> its Hydra config name
SCRIPTS = {"train.py": "train", "evaluate.py": "eval"}
# `python -m <module>` Hydra apps -> config name
MODULES = {"longact_pl.premise": "premise"}
# the documents whose commands are tested: the README and the pages of docs/ (not docs/results/, which
# record what was run then)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT_PATH = re.compile(r"^(?:\./)?(scripts/[\w./-]+\.(?:py|sh|sbatch))$")


class Command(NamedTuple):
    """One documented command: where it is written, its config, its overrides, and whether it sweeps."""

    doc: str
    config: str
    overrides: list[str]
    multirun: bool


SHELL_LABELS = {"", "bash", "sh", "shell", "console"}


def shell_lines(markdown: str) -> list[str]:
    """The lines of every ``bash``/``sh``/unlabelled code block, continuation lines joined.

    Fences are paired in order, so the closing fence of a ``json`` block never opens a shell block.
    """
    blocks, label, block = [], None, []
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            if label is None:  # an opening fence
                label, block = line.lstrip()[3:].strip(), []
            else:
                if label in SHELL_LABELS:
                    blocks.append("\n".join(block))
                label = None
        elif label is not None:
            block.append(line)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def _words(line: str) -> list[str]:
    """The shell words of ``line``; a line that is no shell (an error message in a plain block) has none."""
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        if any(name in line for name in (*SCRIPTS, *MODULES, "scripts/")):
            raise  # a command with unbalanced quotes: a broken command, not prose
        return []


def _entry(words: list[str]) -> tuple[str, int] | None:
    """``(config name, index of its first argument)`` of a Hydra command line, else ``None``."""
    for i, word in enumerate(words):
        if Path(word).name in SCRIPTS:
            return SCRIPTS[Path(word).name], i + 1
        if word == "-m" and i + 1 < len(words) and words[i + 1] in MODULES:
            return MODULES[words[i + 1]], i + 2
    return None


def doc_commands(path: Path) -> list[Command]:
    """Every ``train.py`` / ``evaluate.py`` / ``python -m longact_pl.premise`` command in ``path``."""
    found = []
    for line in shell_lines(path.read_text()):
        words = _words(line)
        entry = _entry(words)
        if entry is None:
            continue
        name, start = entry
        args = words[start:]
        multirun = "-m" in args or "--multirun" in args
        # `[eval.cot=true]` marks an optional override; `<run>` a placeholder
        args = [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in args]
        kept = [a for a in args if not a.startswith(("-", "hydra/", "hydra."))]
        overrides = [re.sub(r"<[^>]+>", "placeholder", a) for a in kept]
        found.append(Command(path.name, name, overrides, multirun))
    return found


def doc_script_paths(path: Path) -> list[str]:
    """Every ``scripts/...`` file named as a word of a shell line in ``path``."""
    words = (w for line in shell_lines(path.read_text()) for w in _words(line))
    return sorted({m.group(1) for w in words if (m := SCRIPT_PATH.match(w))})


def expand(overrides: list[str]) -> list[list[str]]:
    """Override lists that together compose every swept value once (``a=1,2 b=x,y,z`` -> 3 lists)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for raw, override in zip(overrides, parsed):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([raw])
    width = max(len(c) for c in choices)
    return [[c[i % len(c)] for c in choices] for i in range(width)]


def check_command(command: Command, output_dir: Path) -> None:
    """Compose ``command`` (each swept value at least once) and run the checks its script runs first."""
    runs = expand(command.overrides) if command.multirun else [command.overrides]
    # train.py and evaluate.py write under paths.output_dir (the premise config has no such field)
    output = [] if command.config == "premise" else [f"paths.output_dir={output_dir}"]
    for args in itertools.islice(runs, 8):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(command.config, overrides=[*output, *args])
        if command.config == "train":
            check_config(cfg)
            build_light(cfg)
        elif command.config == "premise":
            check_types(cfg)
            PremiseOptions.from_mapping(cfg.premise)
        else:
            check_types(cfg)
            instantiate(cfg.rollout)


COMMANDS = [c for doc in DOCS for c in doc_commands(doc)]
SCRIPT_PATHS = [(doc.name, p) for doc in DOCS for p in doc_script_paths(doc)]


def test_the_documents_show_commands_of_every_script():
    """Guards the parser: documents without these would make the tests below vacuous."""
    readme = [c for c in COMMANDS if c.doc == "README.md"]
    assert sum(c.config == "train" for c in readme) >= 5
    assert sum(c.config == "eval" for c in readme) >= 3
    assert any(c.multirun for c in readme)
    jsonl = ["data=jsonl", "data.train.path=train.jsonl", "data.val.path=val.jsonl"]
    assert jsonl in [c.overrides for c in readme]
    # the docs pages are read too: the GPU, training and evaluation pages hold train.py / evaluate.py ones,
    # and the premise page a `python -m longact_pl.premise` one
    by_doc = {c.doc for c in COMMANDS}
    assert {"gpu.md", "training.md", "evaluation.md", "rollouts.md", "premise.md", "docqa.md"} <= by_doc
    assert any(c.config == "premise" for c in COMMANDS)
    assert ("README.md", "scripts/report.py") in SCRIPT_PATHS


def _command_id(c: Command) -> str:
    return f"{c.doc}: {c.config} {' '.join(c.overrides)}"[:100]


@pytest.mark.parametrize("command", COMMANDS, ids=[_command_id(c) for c in COMMANDS])
def test_documented_command_composes_and_passes_the_fast_checks(tmp_path, command):
    check_command(command, tmp_path)


@pytest.mark.parametrize("doc,script", SCRIPT_PATHS, ids=[f"{d}: {s}" for d, s in SCRIPT_PATHS])
def test_documented_script_exists(doc, script):
    assert (ROOT / script).is_file(), f"{doc} names {script}, which does not exist"


def test_a_wrong_override_in_a_docs_page_fails(tmp_path):
    """A page under docs/ with a misspelt field or option is caught, as in the README."""
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```bash\n.venv/bin/python train.py algo=grpo \\\n    masking.no_such_option=1\n"
        ".venv/bin/python evaluate.py eval=no_such_benchmark\n"
        "python -m longact_pl.premise premise.lengths=[4096,256]\n"
        "scripts/no_such_script.sh --dry\n```\n"
    )
    commands = doc_commands(page)
    assert [c.config for c in commands] == ["train", "eval", "premise"]
    for command in commands:
        with pytest.raises(Exception):  # noqa: B017 - Hydra's and the checks' own errors, each its type
            check_command(command, tmp_path)
    assert doc_script_paths(page) == ["scripts/no_such_script.sh"]
    assert not (ROOT / "scripts/no_such_script.sh").exists()


def test_fences_pair_in_order():
    """A ``json`` block's closing fence does not open a shell block (prose after it is not read)."""
    text = '```json\n{"a": 1}\n```\nprose with train.py a=1\n```bash\npython train.py b=2 \\\n  c=3\n```\n'
    assert [line.split() for line in shell_lines(text)] == [["python", "train.py", "b=2", "c=3"]]
