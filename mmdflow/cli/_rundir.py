"""The output directory of a command: mmdflow's own files in it, and nothing else.

Every directory a command writes holds a marker file, :data:`MARKER`, that lists the
files mmdflow wrote there and the run's status. mmdflow only ever replaces or removes
files named in that marker:

* ``--out`` must name a new or empty directory, or (with ``--overwrite`` or
  ``--resume``) one that holds a marker, i.e. a directory mmdflow wrote. An empty
  ``--out``, the current directory, one of its parents, the home directory or the
  filesystem root are refused outright.
* ``--overwrite`` removes the earlier run's own files when the new run writes its
  first file (a checkpoint or the final outputs); files a user added stay.
* ``--resume`` replaces the run's own files one by one; files a user added stay.
* Every file is written to a temporary name in the same directory and renamed into
  place (``os.replace``), so an interruption never leaves a half-written file; the
  final outputs of a fresh run are staged in a temporary sibling directory and
  renamed as a whole, so such a directory is complete or absent.

Example:
    >>> import tempfile, pathlib
    >>> from mmdflow.cli._rundir import RunDir
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> rd = RunDir(str(root / "run"), "flow")
    >>> rd.write("note.txt", lambda p: p.write_text("hello"))
    >>> sorted(rd.marker()["files"])
    ['note.txt']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmdflow.cli._common import _SIGNALS, CLIError, _int_at_least

#: The marker file in every directory mmdflow writes.
MARKER = ".mmdflow-run.json"
#: ``--checkpoint-every`` default of ``flow`` and ``train``. Measured on a busy 2-core CPU:
#: a flow checkpoint (state, history, 51 trajectory snapshots) at n=1000 is 0.43 MB and
#: takes 2-13 ms (n=16,384: 6.9 MB, 11-28 ms), under 0.5% of 100 steps of ~25 ms; a train
#: checkpoint of the default MLP ~4 ms against 3-16 ms per step. A crash loses at most
#: this many steps (Ctrl-C / SIGTERM always write a checkpoint of the current step).
CHECKPOINT_EVERY = 100
#: the options a ``--resume`` may change (every other one would alter the run)
RESUMABLE = ("steps", "quiet", "checkpoint_every")


def add_resume_options(p) -> None:
    """Adds ``--resume`` and ``--checkpoint-every`` to the subcommand parser ``p``."""
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR up to --steps from its last checkpoint (exactly as an "
        "uninterrupted run); every option but --steps, --quiet and --checkpoint-every must "
        "be as in that run",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_int_at_least(0),
        default=CHECKPOINT_EVERY,
        metavar="N",
        help="write DIR/checkpoint.npz every N steps (0: only at the end and on Ctrl-C / "
        f"SIGTERM, which always keep one); default {CHECKPOINT_EVERY}",
    )


def read_marker(path: Path) -> dict | None:
    """The marker of directory ``path`` as a dict, or ``None`` if it has none (or it is unreadable)."""
    try:
        m = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("files"), list):
        return None
    m["files"] = [f for f in m["files"] if _plain_name(f)]
    return m


def _plain_name(name: Any) -> bool:
    """A file name directly inside the run directory (no separators, not ``.``/``..``)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MARKER)
        and "/" not in name
        and os.sep not in name
        and (os.altsep is None or os.altsep not in name)
    )


def _refused_location(p: Path) -> str | None:
    """Why ``p`` may never be an output directory, or ``None``."""
    r = p.resolve()
    cwd = Path.cwd().resolve()
    if r == cwd:
        return "is the current directory"
    if r in cwd.parents:
        return "is a parent of the current directory"
    if r == Path(r.anchor):
        return "is the filesystem root"
    with contextlib.suppress(RuntimeError, KeyError):
        if r == Path.home().resolve():
            return "is the home directory"
    return None


def check_out(out: str, command: str, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Checks ``--out`` before any work is done; returns it as a :class:`~pathlib.Path`.

    Args:
        out: The ``--out`` argument.
        command: The command writing it (``"flow"``, ``"train"``, ...).
        overwrite: ``--overwrite`` was given.
        resume: ``--resume`` was given (the directory must hold a run of ``command``).

    Raises:
        CLIError: With a one-line message, when ``out`` may not be written.
    """
    text = str(out)
    if not text.strip():
        raise CLIError("--out is empty; name a directory for the run, e.g. --out runs/demo")
    p = Path(text).expanduser()
    why = _refused_location(p)
    if why is not None:
        raise CLIError(
            f"--out {text!r} {why}; name a new directory for the run, e.g. --out runs/demo"
        )
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out {text!r} exists and is not a directory")
    for q in (p, *p.parents):  # the first existing ancestor must be a writable directory
        if q.exists():
            if not q.is_dir():
                raise CLIError(f"--out {text!r}: {str(q)!r} is not a directory")
            if not os.access(q, os.W_OK | os.X_OK):
                raise CLIError(f"--out {text!r}: {str(q)!r} is not writable")
            break
    marker = read_marker(p) if p.is_dir() else None
    if resume:
        if marker is None:
            raise CLIError(
                f"--resume: --out {text!r} holds no mmdflow run to resume (no checkpoint, no "
                f"{MARKER})"
            )
        if marker.get("command") != command:
            raise CLIError(
                f"--resume: --out {text!r} holds a `mmdflow {marker.get('command')}` run, not "
                f"`mmdflow {command}`"
            )
        return p
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise CLIError(
                f"--out {text!r} exists and is not empty; pass --overwrite to replace an earlier "
                "mmdflow run there (only its own files are replaced), or --resume to continue it"
            )
        if marker is None:
            raise CLIError(
                f"--out {text!r} holds files mmdflow did not write (no {MARKER}); --overwrite "
                "only replaces an earlier mmdflow run: choose another --out"
            )
    return p


class RunDir:
    """mmdflow's own files in one output directory (see the module docstring).

    Args:
        out: The ``--out`` argument (checked by :func:`check_out`).
        command: The command writing it.
        overwrite: Replace an earlier run's own files (``--overwrite``).
        resume: Continue the run in ``out`` (``--resume``).
    """

    def __init__(self, out: str, command: str, *, overwrite: bool = False, resume: bool = False):
        self.path = check_out(out, command, overwrite=overwrite, resume=resume).absolute()
        self.text = str(out)
        self.command = command
        self.overwrite = overwrite
        self.resume = resume
        prev = read_marker(self.path) if self.path.is_dir() else None
        #: the earlier run's own files, removed at the first write when overwriting
        self._stale: list[str] = list(prev["files"]) if prev and overwrite and not resume else []
        self._marker: dict = dict(prev) if prev and resume else {}
        self._marker.setdefault("files", [])
        self._opened = False

    # ---------------------------------------------------------------- marker
    def marker(self) -> dict:
        """The marker as it stands (a copy)."""
        return json.loads(json.dumps(self._marker))

    def _save_marker(self, directory: Path | None = None) -> None:
        from mmdflow import __version__

        self._marker.update(command=self.command, mmdflow_version=__version__)
        self._marker["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._marker["files"] = sorted(set(self._marker["files"]))
        text = json.dumps(self._marker, indent=1) + "\n"
        _atomic_write((directory or self.path) / MARKER, lambda p: p.write_text(text))

    def set_status(self, status: str, **info: Any) -> None:
        """Records the run's status (``"running"``, ``"interrupted"``, ``"complete"``, ...).

        Only written once the directory exists (a run that wrote nothing leaves nothing).
        """
        self._marker["status"] = status
        self._marker.update(info)
        if self._opened or (self.path / MARKER).exists():
            self._save_marker()

    # ---------------------------------------------------------------- writing
    def _open(self) -> None:
        """Creates the directory and its marker; with ``overwrite``, drops the earlier run's files."""
        if self._opened:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"--out {self.text!r}: cannot create it ({e.strerror})") from None
        current = read_marker(self.path)
        if current is None and any(self.path.iterdir()):  # appeared meanwhile
            raise CLIError(f"--out {self.text!r} was filled by someone else during the run")
        for name in self._stale:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        self._stale = []
        self._marker.setdefault("status", "running")
        self._save_marker()
        self._opened = True

    def write(self, name: str, writer: Callable[[Path], None]) -> None:
        """Writes the own file ``name`` atomically: ``writer(tmp_path)``, then a rename.

        ``tmp_path`` keeps ``name``'s suffix (``np.save`` and ``savefig`` go by it).
        """
        if not _plain_name(name):
            raise ValueError(f"`name` must be a plain file name; got {name!r}")
        self._open()
        _atomic_write(self.path / name, writer)
        if name not in self._marker["files"]:
            self._marker["files"].append(name)
            self._save_marker()

    @contextlib.contextmanager
    def staged(self, status: str = "complete", **info: Any) -> Iterator[Path]:
        """Yields a temporary directory for the final outputs; moves them in on success.

        A fresh run's directory is renamed into place as a whole (complete or absent);
        otherwise the files are moved in one by one (``os.replace``), next to what a
        user added. On any exception (or a pending Ctrl-C) the staged files are
        discarded and the directory keeps what it had (e.g. the last checkpoint).
        """
        parent = self.path.parent
        created = []
        p = parent
        while not p.exists():
            created.append(p)
            p = p.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=parent))
        except OSError as e:
            raise CLIError(f"--out {self.text!r}: cannot write there ({e.strerror})") from None

        def discard():
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.path.exists():
                for q in created:  # deepest first
                    with contextlib.suppress(OSError):
                        q.rmdir()

        try:
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700)
            yield tmp
            _SIGNALS.check()  # a deferred Ctrl-C discards the staged outputs
            names = sorted(q.name for q in tmp.iterdir())
            if not all(_plain_name(n) and (tmp / n).is_file() for n in names):
                raise RuntimeError(f"staged outputs must be plain files; got {names}")
        except BaseException:
            discard()
            raise
        self._marker["status"] = status
        self._marker.update(info)
        if not self._opened and not self.path.exists():
            self._marker["files"] = names
            self._save_marker(tmp)
            try:
                tmp.rename(self.path)
            except OSError:
                if self.path.exists():  # appeared meanwhile: fall through to a merge
                    pass
                else:
                    discard()
                    raise
            else:
                self._opened = True
                return
        try:
            self._open()
            for n in names:
                os.replace(tmp / n, self.path / n)
                if n not in self._marker["files"]:
                    self._marker["files"].append(n)
            self._save_marker()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def fingerprint(points) -> str:
    """SHA-256 of an array's shape, dtype and bytes: ``--resume`` refuses changed input data."""
    import numpy as np

    a = np.ascontiguousarray(points)
    h = hashlib.sha256(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    """``writer(tmp)`` to a temporary file beside ``path`` (same suffix), then ``os.replace``."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class Checkpoints:
    """Periodic checkpoints of a run, and one more when a Ctrl-C / SIGTERM is pending.

    Call it after every compiled chunk with the step reached and a function that writes
    the checkpoint to a given path; it writes when ``every`` steps have passed since
    the last one (or a signal is pending), records the step in the marker, and then
    raises ``KeyboardInterrupt`` if a signal is pending (:class:`_DeferredSignals`).

    Args:
        rundir: The run's directory.
        every: Steps between checkpoints (``0``: only on a signal and when called with
            ``force=True``).
        name: The checkpoint's file name.
    """

    def __init__(self, rundir: RunDir, every: int, name: str = "checkpoint.npz"):
        self.rundir = rundir
        self.every = int(every)
        self.name = name
        self.last_step: int | None = None

    def __call__(
        self, step: int, write: Callable[[Path], None], *, force: bool = False, status=None
    ) -> None:
        """Writes a checkpoint at ``step`` if due; then honours a pending signal."""
        pending = _SIGNALS.pending is not None
        due = self.every > 0 and (step - (self.last_step or 0)) >= self.every
        if (force or pending or due) and step != self.last_step:
            self.rundir.write(self.name, write)
            self.last_step = step
            if status is None:
                status = "interrupted" if pending else "running"
            self.rundir.set_status(status, checkpoint_step=step)
        _SIGNALS.check()

    def mark_interrupted(self) -> None:
        """Records status ``"interrupted"`` at the last checkpoint (if any).

        For the command's ``except KeyboardInterrupt``: a signal can arrive after this
        object's last write and be raised at a later safe point (e.g. the progress bar).
        """
        if self.last_step is not None:
            self.rundir.set_status("interrupted", checkpoint_step=self.last_step)

    def note(self) -> str:
        """For messages: where the last checkpoint is and how to continue, or ``""``."""
        if self.last_step is None:
            return ""
        return (
            f"; the checkpoint of step {self.last_step} is in {self.rundir.text!r}: "
            "continue with --resume"
        )
