"""Check a ``ckpt_path`` before a run touches its directory.

It must exist, be readable, and be a Lightning checkpoint loadable with ``weights_only=True`` (plain tensors
and containers; no code in a checkpoint ever runs).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longact_pl.checkpoints.run_config import CONFIG_KEY
from longact_pl.masking.callback import STATE_KEY as MASK_STATE

# Lightning's ModelParallelStrategy (strategy=fsdp) writes a sharded checkpoint as a folder with this file
SHARDED_META = "meta.pt"
_RETRY = "Resume from an intact checkpoint, or set ckpt_path=null to start a new run."


@dataclass(frozen=True)
class CheckpointInfo:
    """What a run needs to know about its checkpoint before it builds anything.

    Attributes:
        global_step: Optimizer steps the checkpoint has done.
        callbacks: State keys of the callbacks whose state it holds (``SaliencyMask`` with LongAct masks).
        config: The resolved config the checkpoint was trained with (``None``: written before it was
            recorded).
        shapes: Shape of every tensor of its ``state_dict`` (empty for a sharded checkpoint).
    """

    global_step: int
    callbacks: frozenset[str] = frozenset()
    config: dict | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _others(path: Path) -> str:
    found = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path) if path.parent.is_dir() else []
    return f" Other checkpoints in {path.parent}: {', '.join(found)}." if found else ""


def _unreadable(path: Path, problem: str) -> ValueError:
    return ValueError(f"ckpt_path={path} is not a readable checkpoint: {problem}. {_RETRY}{_others(path)}")


def _first_sentence(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.split('. ')[0].splitlines()[0] if text else 'no message'}"


def check_checkpoint(path: str | Path) -> CheckpointInfo:
    """Load the checkpoint's trainer state: its ``global_step`` and which callbacks saved state.

    The load uses ``mmap``, so tensors are not read into memory (cheap even for a multi-GB checkpoint).

    Args:
        path: A ``.ckpt`` file, or the folder of a sharded FSDP checkpoint.

    Raises:
        FileNotFoundError: If ``path`` does not exist, listing the checkpoints beside it.
        ValueError: If it cannot be read as a Lightning checkpoint with ``weights_only=True``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        folder = path.parent
        found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        where = f"{folder} holds: {', '.join(found)}" if found else f"{folder} holds no .ckpt file"
        raise FileNotFoundError(f"ckpt_path={path} does not exist ({where}); fix ckpt_path or set it to null")
    file = path / SHARDED_META if path.is_dir() else path
    if not file.is_file():
        raise _unreadable(path, f"a folder without {SHARDED_META}, so not a sharded checkpoint")
    if file.stat().st_size == 0:
        raise _unreadable(path, "the file is empty (a full disk or a kill while it was written)")
    if not zipfile.is_zipfile(file):  # every torch.save file since torch 1.6 is a zip archive
        problem = (
            "not a complete torch.save archive (truncated by a full disk or a kill, or not a checkpoint)"
        )
        raise _unreadable(path, problem)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        text = str(err)
        if "WeightsUnpickler error:" in text:  # objects other than tensors and plain containers
            detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
            raise ValueError(
                f"ckpt_path={path} holds objects that need code to load, and checkpoints are loaded with "
                f"weights_only=True ({detail}). Resume from a checkpoint written by train.py."
            ) from None
        raise _unreadable(path, _first_sentence(err)) from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise _unreadable(path, "it holds no global_step, so it is not a Lightning training checkpoint")
    callbacks = state.get("callbacks")
    config = state.get(CONFIG_KEY)
    weights = state.get("state_dict")
    shapes = {
        k: tuple(v.shape)
        for k, v in (weights.items() if isinstance(weights, dict) else ())
        if hasattr(v, "shape")
    }
    return CheckpointInfo(
        int(state["global_step"]),
        frozenset(callbacks if isinstance(callbacks, dict) else ()),
        config if isinstance(config, dict) else None,
        shapes,
    )


def check_resume_weights(info: CheckpointInfo, path: str | Path, module: torch.nn.Module) -> None:
    """Refuse a checkpoint whose weights do not fit the model this run built (before anything is written).

    Names the parameters that are missing, unexpected or of another shape, and the settings to look at,
    instead of torch's ``size mismatch`` lines after the run directory has been written.

    Raises:
        ValueError: Listing up to five differences of each kind.
    """
    if not info.shapes:  # a sharded checkpoint keeps its weights outside meta.pt: Lightning checks them
        return
    mine = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(mine) - set(info.shapes))
    extra = sorted(set(info.shapes) - set(mine))
    sizes = sorted(k for k in set(mine) & set(info.shapes) if mine[k] != info.shapes[k])
    if not (missing or extra or sizes):
        return
    parts = []
    if sizes:
        parts.append(
            "other shapes: "
            + ", ".join(f"{k} {info.shapes[k]} in the checkpoint, {mine[k]} here" for k in sizes[:5])
        )
    if missing:
        parts.append("not in the checkpoint: " + ", ".join(missing[:5]))
    if extra:
        parts.append("only in the checkpoint: " + ", ".join(extra[:5]))
    raise ValueError(
        f"ckpt_path={path} holds weights of another model than this run's model settings build "
        f"({'; '.join(parts)}). Resume with the checkpoint's model (model=..., model.* as in the run that "
        "wrote it), or start a new run with ckpt_path=null."
    )


def check_resume_masking(info: CheckpointInfo, path: str | Path, masking: bool, rebuild: bool) -> None:
    """Refuse to resume across masked and dense training, which would mislabel an ablation.

    Args:
        info: The checkpoint's :func:`check_checkpoint`.
        path: ``ckpt_path`` (for the message).
        masking: This run has a LongAct masking callback (any ``masking`` but ``none``).
        rebuild: ``masking.rebuild_masks``: build masks at the resumed step (a dense checkpoint may go on
            masked, and says so in ``mask_summary.json``).

    Raises:
        ValueError: A masked checkpoint resumed with ``masking=none``, or a dense one with masking and
            without ``masking.rebuild_masks=true``.
    """
    saved = MASK_STATE in info.callbacks
    if saved and not masking:
        raise ValueError(
            f"ckpt_path={path} was trained with LongAct masks (it holds SaliencyMask state) and this run has "
            "masking=none: it would go on densely under a dense label, mislabelling the ablation. Resume "
            "with the checkpoint's masking (its run's config.yaml), or set ckpt_path=null for a new run."
        )
    if masking and not saved and not rebuild:
        raise ValueError(
            f"ckpt_path={path} was trained densely (masking=none: no SaliencyMask state) and this run sets a "
            "masking: its first steps would be reported as masked. Resume with masking=none, or set "
            "masking.rebuild_masks=true to build masks at the resumed step (recorded in mask_summary.json)."
        )
