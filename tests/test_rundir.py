"""Output directories: mmdflow only ever replaces or removes the files it wrote itself."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _cli import run as _run

from mmdflow.cli._rundir import MARKER, RunDir, read_marker

FLOW = ["flow", "--n", "20", "--steps", "2", "--num-features", "8", "--quiet"]


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("out", ["", " ", ".", "./", "..", "sub/..", "~"])
def test_out_refuses_cwd_its_parents_and_home(tmp_path, capsys, monkeypatch, out):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    before = _snapshot(tmp_path)
    rc, _, err = _run(capsys, *FLOW, "--out", out, "--overwrite")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--out" in err
    assert _snapshot(tmp_path) == before


def test_overwrite_refuses_a_directory_mmdflow_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "figs").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")  # own-looking names are not enough: no marker
    (out / "figs" / "a.png").write_bytes(b"x")
    before = _snapshot(out)
    rc, _, err = _run(capsys, *FLOW, "--out", out, "--overwrite")
    assert rc == 2 and MARKER in err and "did not write" in err
    assert _snapshot(out) == before


def test_overwrite_replaces_only_own_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(capsys, *FLOW, "--out", out)[0] == 0
    m = read_marker(out)
    assert m["command"] == "flow" and m["status"] == "complete"
    own = set(m["files"])
    assert own == {p.name for p in out.iterdir()} - {MARKER}
    assert {"particles.npy", "metrics.json", "flow.png"} <= own
    # a user's files, and an own file of the earlier run that the new run does not write
    (out / "notebook.ipynb").write_text("{}")
    (out / "figures").mkdir()
    (out / "figures" / "f.png").write_bytes(b"png")
    (out / "old-output.npy").write_bytes(b"old")
    m["files"].append("old-output.npy")
    (out / MARKER).write_text(json.dumps(m))
    mine = _snapshot(out / "figures")
    old = (out / "particles.npy").read_bytes()
    assert _run(capsys, *FLOW, "--out", out, "--overwrite", "--seed", "3")[0] == 0
    assert (out / "notebook.ipynb").read_text() == "{}"
    assert _snapshot(out / "figures") == mine
    assert not (out / "old-output.npy").exists()  # the earlier run's own file
    assert (out / "particles.npy").read_bytes() != old
    assert set(read_marker(out)["files"]) == own
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_marker_names_only_plain_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "victim.txt").write_text("keep")
    (out / MARKER).write_text(
        json.dumps({"command": "flow", "files": ["../victim.txt", "/etc/passwd", ".", "a.npy"]})
    )
    assert read_marker(out)["files"] == ["a.npy"]
    rd = RunDir(str(out), "flow", overwrite=True)
    rd.write("b.txt", lambda p: p.write_text("b"))
    assert (tmp_path / "victim.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="plain file name"):
        rd.write("../c.txt", lambda p: p.write_text("c"))


def test_failed_write_keeps_the_previous_file(tmp_path):
    rd = RunDir(str(tmp_path / "run"), "flow")
    rd.write("a.txt", lambda p: p.write_text("first"))

    def broken(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        rd.write("a.txt", broken)
    assert (tmp_path / "run" / "a.txt").read_text() == "first"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [MARKER, "a.txt"]


def test_out_below_a_file_is_one_line_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, _, err = _run(capsys, *FLOW, "--out", tmp_path / "f" / "run")
    assert rc == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1


def test_train_resume_keeps_user_files(tmp_path, capsys):
    args = ["train", "--n", "200", "--batch-size", "16", "--eval-every", "2", "--quiet"]
    out = tmp_path / "run"
    assert _run(capsys, *args, "--steps", "2", "--out", out)[0] == 0
    (out / "analysis.ipynb").write_text("{}")
    (out / "figures").mkdir()
    (out / "figures" / "fig.png").write_bytes(b"png")
    rc, _, err = _run(capsys, *args, "--steps", "4", "--out", out, "--resume")
    assert rc == 0, err
    assert (out / "analysis.ipynb").read_text() == "{}"
    assert (out / "figures" / "fig.png").read_bytes() == b"png"
    assert json.loads((out / "metrics.json").read_text())["history"]["eval_step"] == [0, 2, 4]


def test_sigterm_exit_code(tmp_path, capsys, monkeypatch):
    from mmdflow import flows

    def terminated_run(stepper, x0, y, *, state, on_chunk, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # recorded by the CLI's handler ...
        on_chunk(1, state, lambda: {})  # ... and raised at the next safe point
        raise AssertionError("not reached")

    monkeypatch.setattr(flows, "run", terminated_run)
    rc, _, err = _run(capsys, *FLOW, "--out", tmp_path / "out")
    assert rc == 143 and "SIGTERM" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


_STUCK = textwrap.dedent(
    """
    import sys, time
    import jax
    from jax import lax
    from mmdflow.cli._common import _SIGNALS

    _SIGNALS.patience = 0.2
    _SIGNALS.install()

    def spin(n):  # a compiled loop that runs for minutes: Python handlers cannot run
        return lax.fori_loop(0, n, lambda i, c: lax.fori_loop(0, n, lambda j, d: d * 1.0000001 + 1e-9, c), 1.0)

    f = jax.jit(spin).lower(50_000).compile()
    print("ready", flush=True)
    f(50_000).block_until_ready()
    print("finished", flush=True)
    """
)


def test_second_signal_aborts_a_stuck_compiled_step(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(_STUCK)
    p = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        t0 = time.perf_counter()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=20)
        waited = time.perf_counter() - t0
    finally:
        p.kill()
    out, err = p.communicate()
    assert rc == 143 and "finished" not in out
    assert "stopping when the current compiled step ends" in err and "aborted" in err
    assert waited < 5


def test_broken_pipe_is_quiet(tmp_path):
    code = "import sys; from mmdflow import cli; sys.exit(cli.main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, *FLOW, "--out", str(tmp_path / "o")]
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the summary line is printed
    res = subprocess.run(args, stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert res.returncode == 141, res.stderr
    assert res.stderr == ""
    assert np.load(tmp_path / "o" / "particles.npy").shape == (20, 2)


def test_signal_during_a_checkpoint_write_marks_the_run_interrupted(tmp_path):
    # the race behind a flaky real-SIGTERM train test: the signal lands while the checkpoint
    # is written, is raised after it, and the marker must not stay "running"
    from mmdflow.cli._common import _SIGNALS
    from mmdflow.cli._rundir import Checkpoints

    ck = Checkpoints(RunDir(str(tmp_path / "run"), "train"), every=1)

    def write(p):
        p.write_text("state")
        _SIGNALS.pending = signal.SIGTERM

    try:
        with pytest.raises(KeyboardInterrupt):
            ck(1, write)
        assert read_marker(tmp_path / "run")["status"] == "running"
        ck.mark_interrupted()
    finally:
        _SIGNALS.pending = None
    m = read_marker(tmp_path / "run")
    assert m["status"] == "interrupted" and m["checkpoint_step"] == 1
