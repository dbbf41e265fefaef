"""Checkpoints of ``mmdflow flow`` and the checks that let ``--resume`` continue one exactly.

A checkpoint (``DIR/checkpoint.npz``, :mod:`mmdflow._checkpoint`) holds the full flow
state (particles, PRNG key, random features, neural critic and optimizer state), the
history so far (``step``, ``mmd2`` or a density flow's ``ksd2``, ``kinetic``, ``critic``, ``wall_time`` and the
``trajectory`` snapshots) and, in its meta, the raw options of the run
(:func:`run_args`), the resolved ``record_every`` and fingerprints of the source and
target points. ``--resume`` refuses every option that would change the run; only
:data:`RESUMABLE` ones may differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mmdflow.cli._common import CLIError
from mmdflow.cli._rundir import RESUMABLE, fingerprint

#: parsed arguments that are not options of the run
_NOT_RUN_OPTIONS = ("func", "command", "out", "overwrite", "resume")
#: the checkpoint file in DIR
CHECKPOINT = "checkpoint.npz"
#: ``meta["format"]`` of a flow checkpoint
FORMAT = "mmdflow-flow-checkpoint/1"
#: the history arrays stored in a checkpoint
HISTORY_KEYS = ("step", "mmd2", "ksd2", "kinetic", "critic", "wall_time", "trajectory")
#: one of these is in every checkpoint's history: sample flows record MMD^2, density flows KSD^2
METRICS = ("mmd2", "ksd2")


#: options added after runs were written, with the value those runs had
_ADDED = {"param": [], "density": None, "dim": None}


def run_args(args) -> dict[str, Any]:
    """The raw options that define the run (``argparse`` destinations), JSON-ready."""
    skip = RESUMABLE + _NOT_RUN_OPTIONS
    return json.loads(json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in skip}))


def _show(v: Any) -> str:
    if v is None:
        return "default"
    if isinstance(v, bool):
        return "on" if v else "off"
    return repr(v)


def read_meta(path: Path, out: str) -> dict:
    """The meta of the checkpoint ``path`` (one-line :class:`CLIError` if unusable)."""
    if not path.is_file():
        raise CLIError(f"--resume: no {CHECKPOINT} in --out {out!r} (nothing to continue)")
    from mmdflow import _checkpoint

    try:
        meta = _checkpoint.read_meta(path)
    except (OSError, ValueError, KeyError) as e:
        raise CLIError(f"--resume: cannot read {CHECKPOINT} in --out {out!r} ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CLIError(
            f"--resume: {CHECKPOINT} in --out {out!r} is not a `mmdflow flow` checkpoint"
        )
    return meta


def check_resume(args, meta: dict, out: str) -> None:
    """Refuses options that differ from the run in ``out``, naming the option and both values."""
    old = meta.get("args", {})
    for key, value in run_args(args).items():
        before = old.get(key, _ADDED.get(key, "(not recorded)"))
        if before != value:
            raise CLIError(
                f"--resume: --{key.replace('_', '-')} {_show(value)} differs from the run in "
                f"{out!r} ({_show(before)}); only --steps, --quiet and --checkpoint-every "
                "may change"
            )


def check_points(meta: dict, out: str, **points: np.ndarray) -> None:
    """Refuses source / target points that differ from the run's (e.g. an edited file)."""
    for name, pts in points.items():
        if meta.get(f"{name}_sha256") != fingerprint(pts):
            raise CLIError(
                f"--resume: the --{name} points differ from those of the run in {out!r} "
                "(was the file changed?)"
            )


def save(path: Path, state, history: dict, meta: dict) -> None:
    """Writes a flow checkpoint: ``state``, the history arrays, ``meta`` (plus its step)."""
    from mmdflow import _checkpoint

    extra = {k: np.asarray(history[k]) for k in HISTORY_KEYS if k in history}
    meta = {**meta, "format": FORMAT, "step": int(state.count)}
    meta["diverged"] = history.get("diverged")
    _checkpoint.save(path, state, meta, **extra)


def load(path: Path, like, out: str) -> tuple[Any, dict]:
    """``(state, history)`` from a flow checkpoint; ``state`` shaped and placed like ``like``."""
    import jax

    from mmdflow import _checkpoint

    try:
        state, meta = _checkpoint.load(path, like)
    except (OSError, ValueError, KeyError) as e:
        raise CLIError(f"--resume: cannot restore {CHECKPOINT} in --out {out!r} ({e})") from None
    history = dict(meta["extra"])
    missing = [k for k in HISTORY_KEYS if k not in history and k not in METRICS]
    if not any(k in history for k in METRICS):
        missing.append(" or ".join(METRICS))
    if missing:
        raise CLIError(f"--resume: {CHECKPOINT} in --out {out!r} lacks {missing}")
    # sharded runs (--devices): the same placement as a fresh state
    state = jax.tree.map(lambda a, t: jax.device_put(a, t.sharding), state, like)
    return state, history
