"""Every ``train.py`` / ``evaluate.py`` command in the README composes and passes the fast checks.

The commands are read from the README itself (shell code blocks, ``\\`` continuations joined), so a command
added or changed there is tested as written. Each is composed with Hydra; a multirun's swept values are each
composed at least once. Then the checks a real run does before loading a model run too: field types, the
step limit, and building the cheap components (algorithm, rollout engine, callbacks) for ``train.py``; field
types and the rollout engine for ``evaluate.py``. ``hydra/...`` and ``hydra.*`` overrides choose launchers
(optional plugins) and are left out. Placeholders such as ``<run>`` stay as text (nothing is loaded).
"""

import itertools
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from longact_pl.config_check import check_types
from longact_pl.train import build_light, check_config
from tests.helpers import CONF, ROOT

SCRIPTS = {"train.py": "train", "evaluate.py": "eval"}


def shell_lines(markdown: str) -> list[str]:
    """The lines of every ``bash``/``sh``/unlabelled code block, continuation lines joined."""
    blocks = re.findall(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", markdown, flags=re.M | re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def readme_commands(path: Path = ROOT / "README.md") -> list[tuple[str, list[str], bool]]:
    """``(config name, overrides, multirun)`` of each train.py / evaluate.py command in ``path``."""
    found = []
    for line in shell_lines(path.read_text()):
        words = shlex.split(line, comments=True)
        script = next((i for i, w in enumerate(words) if Path(w).name in SCRIPTS), None)
        if script is None:
            continue
        args = words[script + 1 :]
        multirun = "-m" in args or "--multirun" in args
        # `[eval.cot=true]` marks an optional override; `<run>` a placeholder
        args = [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in args]
        kept = [a for a in args if not a.startswith(("-", "hydra/", "hydra."))]
        overrides = [re.sub(r"<[^>]+>", "placeholder", a) for a in kept]
        found.append((SCRIPTS[Path(words[script]).name], overrides, multirun))
    return found


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


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_both_scripts():
    """Guards the parser: a README without these would make the test below vacuous."""
    assert sum(name == "train" for name, _, _ in COMMANDS) >= 8
    assert sum(name == "eval" for name, _, _ in COMMANDS) >= 3
    assert any(multirun for _, _, multirun in COMMANDS)
    jsonl = ["data=jsonl", "data.train.path=train.jsonl", "data.val.path=val.jsonl"]
    assert jsonl in [o for _, o, _ in COMMANDS]


@pytest.mark.parametrize(
    "name,overrides,multirun", COMMANDS, ids=[f"{n}.py {' '.join(o)}"[:90] for n, o, _ in COMMANDS]
)
def test_readme_command_composes_and_passes_the_fast_checks(tmp_path, name, overrides, multirun):
    runs = expand(overrides) if multirun else [overrides]
    for args in itertools.islice(runs, 8):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(name, overrides=[f"paths.output_dir={tmp_path}", *args])
        if name == "train":
            check_config(cfg)
            build_light(cfg)
        else:
            check_types(cfg)
            instantiate(cfg.rollout)
