"""``mmdflow flow``: checkpoints, --resume (exact), interruptions and divergence."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _cli import metrics as _metrics
from _cli import run as _run

from mmdflow import cli, flows
from mmdflow.cli._rundir import MARKER, read_marker

TINY = ["--n", "24", "--record-every", "3", "--quiet"]
METHODS = {
    "sobolev": ["--num-features", "16"],  # random features redrawn at every step
    "mmd": ["--method", "mmd", "--noise", "0.1"],
    "neural-sobolev": ["--method", "neural-sobolev"],
}


SOBOLEV = ["flow", *TINY, *METHODS["sobolev"]]


@pytest.fixture(scope="module")
def sobolev_runs(tmp_path_factory):
    """A 12-step and a 6-step run of the same tiny Sobolev flow (copy before changing)."""
    root = tmp_path_factory.mktemp("sobolev")
    for steps in (6, 12):
        assert cli.main([*SOBOLEV, "--steps", str(steps), "--out", str(root / str(steps))]) == 0
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical particles and trajectories, equal histories (but for wall times)."""
    np.testing.assert_array_equal(np.load(a / "particles.npy"), np.load(b / "particles.npy"))
    with np.load(a / "trajectory.npz") as ta, np.load(b / "trajectory.npz") as tb:
        np.testing.assert_array_equal(ta["snapshots"], tb["snapshots"])
        np.testing.assert_array_equal(ta["steps"], tb["steps"])
    ha, hb = _metrics(a)["history"], _metrics(b)["history"]
    assert set(ha) == set(hb)
    for k in ha:
        if k != "wall_time":
            assert ha[k] == hb[k], k


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_continues_exactly(tmp_path, capsys, method, sobolev_runs):
    args = ["flow", *TINY, *METHODS[method]]
    if method == "sobolev":
        straight, resumed = sobolev_runs / "12", _copy(sobolev_runs / "6", tmp_path / "resumed")
    else:
        straight, resumed = tmp_path / "straight", tmp_path / "resumed"
        assert _run(capsys, *args, "--steps", 12, "--out", straight)[0] == 0
        assert _run(capsys, *args, "--steps", 6, "--out", resumed)[0] == 0
    (resumed / "notes.txt").write_text("mine")  # a user's file stays
    rc, out, err = _run(capsys, *args, "--steps", 12, "--out", resumed, "--resume")
    assert rc == 0, err
    assert "resumed at step 6" in out
    _assert_same_run(straight, resumed)
    m = _metrics(resumed)
    assert m["history"]["step"] == [0, 3, 6, 9, 12]  # step 6 recorded once
    assert m["summary"]["resumed_at_steps"] == [6] and m["status"] == "complete"
    assert (resumed / "notes.txt").read_text() == "mine"
    assert "checkpoint.npz" in m["files"] and read_marker(resumed)["status"] == "complete"


def _interrupt_at(monkeypatch, at: int, sig=signal.SIGINT):
    """Delivers ``sig`` once the flow has reached step ``at`` (recorded, then deferred)."""
    real = flows.run

    def run(*args, on_chunk, **kwargs):
        def hook(step, state, history):
            if step == at:
                signal.raise_signal(sig)
            on_chunk(step, state, history)

        return real(*args, on_chunk=hook, chunk_seconds=1e-9, **kwargs)  # one step a chunk

    monkeypatch.setattr(flows, "run", run)


def test_interrupt_keeps_a_checkpoint_and_resume_finishes_the_run(
    tmp_path, capsys, monkeypatch, sobolev_runs
):
    args = [*SOBOLEV, "--steps", 12, "--checkpoint-every", 0]
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_at(m, 5, signal.SIGTERM)
        rc, stdout, err = _run(capsys, *args, "--out", out)
    assert rc == 143 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "SIGTERM" in lines[0]
    assert "checkpoint of step 5" in lines[0] and "--resume" in lines[0]
    marker = read_marker(out)
    assert marker["status"] == "interrupted" and marker["checkpoint_step"] == 5
    assert {p.name for p in out.iterdir()} == {MARKER, "checkpoint.npz"}  # no partial outputs
    # continued from step 5 (between two records): the same run as an uninterrupted one
    rc, _, err = _run(capsys, *args, "--out", out, "--resume")
    assert rc == 0, err
    _assert_same_run(sobolev_runs / "12", out)


def test_periodic_checkpoints(tmp_path, capsys, monkeypatch):
    seen = []
    real = flows.run

    def run(*args, on_chunk, **kwargs):
        def hook(step, state, history):
            on_chunk(step, state, history)
            ck = out / "checkpoint.npz"
            seen.append(read_marker(out)["checkpoint_step"] if ck.exists() else None)

        return real(*args, on_chunk=hook, chunk_seconds=1e-9, **kwargs)  # one step a chunk

    monkeypatch.setattr(flows, "run", run)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "flow", *TINY, "--steps", 7, "--checkpoint-every", 3, "--out", out)
    assert rc == 0, err
    assert seen == [None, None, 3, 3, 3, 6, 6]
    assert read_marker(out)["checkpoint_step"] == 7  # the final one


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (["--method", "mmd"], "--method 'mmd' differs from the run in"),
        (["--seed", "1"], "--seed 1 differs from the run in"),
        (["--step-size", "0.1"], "--step-size 0.1 differs from the run in"),
        (["--num-features", "8"], "--num-features 8 differs"),
        (["--fixed-features"], "--fixed-features on differs"),
        (["--record-every", "2"], "--record-every 2 differs"),
        (["--kernel", "gaussian"], "--kernel 'gaussian' differs"),
        (["--n", "30"], "--n 30 differs"),
        (["--target", "moons"], "--target 'moons' differs"),
        (["--impl", "dense"], "--impl 'dense' differs"),
        (["--devices", "1"], "--devices 1 differs from the run in"),
        (["--noise", "0.1"], "--noise 0.1 differs from the run in"),
        (["--bandwidth", "1.0"], "--bandwidth 1.0 differs from the run in"),
        (["--reg", "0.1"], "--reg 0.1 differs from the run in"),
    ],
)
def test_resume_refuses_changed_options(tmp_path, capsys, change, needle, sobolev_runs):
    out = _copy(sobolev_runs / "6", tmp_path / "out")
    before = _snapshot(out)
    rc, _, err = _run(capsys, *SOBOLEV, *change, "--steps", 12, "--out", out, "--resume")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmdflow: error: --resume: "), err
    assert needle in lines[0] and str(out) in lines[0]
    assert _snapshot(out) == before


def test_resume_errors(tmp_path, capsys, sobolev_runs):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, *SOBOLEV, "--steps", 2, "--out", out, "--resume")
    assert rc == 2 and "no mmdflow run to resume" in err and not out.exists()
    out = _copy(sobolev_runs / "6", out)
    before = _snapshot(out)
    rc, _, err = _run(capsys, *SOBOLEV, "--steps", 2, "--out", out, "--resume")
    assert rc == 2 and "--steps 2 is below the 6 steps" in err
    rc, _, err = _run(capsys, *SOBOLEV, "--steps", 8, "--out", out, "--resume", "--overwrite")
    assert rc == 2 and "pick one" in err
    assert _snapshot(out) == before
    # the points behind a file name changed: refused
    pts = tmp_path / "pts.npy"
    np.save(pts, np.random.default_rng(0).normal(size=(30, 2)))
    run2 = tmp_path / "run2"
    assert _run(capsys, *SOBOLEV, "--source", pts, "--steps", 2, "--out", run2)[0] == 0
    np.save(pts, np.random.default_rng(1).normal(size=(30, 2)))
    rc, _, err = _run(capsys, *SOBOLEV, "--source", pts, "--steps", 4, "--out", run2, "--resume")
    assert rc == 2 and "--source points differ" in err
    # --steps, --quiet and --checkpoint-every may change (0 steps left: outputs rewritten)
    argv = [a for a in SOBOLEV if a != "--quiet"]
    rc, _, err = _run(
        capsys, *argv, "--steps", 6, "--checkpoint-every", 1, "--out", out, "--resume"
    )
    assert rc == 0, err


def test_divergence_keeps_the_last_finite_state(tmp_path, capsys):
    # exact Sobolev critic with a vanishing ridge: non-finite particles within a few steps
    # (the first step with XLA's default flags, the third with conftest's fast-compile ones)
    out = tmp_path / "nan"
    argv = ["flow", "--n", "128", "--num-features", "exact", "--reg", "1e-8", "--steps", 6]
    rc, stdout, err = _run(capsys, *argv, "--record-every", 3, "--quiet", "--out", out)
    assert rc == 1 and stdout == ""
    lines = err.strip().splitlines()
    hit = re.search(r"diverged at step (\d+) \(non-finite particles at step (\d+)\)", lines[0])
    assert len(lines) == 1 and hit and int(hit[2]) == int(hit[1]) + 1 <= 6, lines
    assert "--reg" in lines[0]
    x = np.load(out / "particles.npy")
    assert np.isfinite(x).all()
    m = _metrics(out)
    assert m["status"] == "diverged" and m["summary"]["diverged"]["step"] == int(hit[1])
    assert read_marker(out)["status"] == "diverged" and (out / "checkpoint.npz").is_file()
    # a blown-up MMD-flow step: finite particles far away, MMD^2 twice its first record
    out = tmp_path / "big"
    argv = ["flow", "--method", "mmd", "--n", "32", "--step-size", "1e4", "--steps", 4]
    rc, stdout, err = _run(capsys, *argv, "--record-every", 2, "--quiet", "--out", out)
    assert rc == 1 and stdout == "" and "MMD^2 rose" in err and "lower" not in err
    m = _metrics(out)
    assert m["summary"]["diverged"]["step"] == 2 and m["history"]["step"] == [0, 2]
    assert "higher" in m["summary"]["mmd2_change"]


def test_sigterm_in_a_subprocess_keeps_a_checkpoint(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mmdflow", "flow", "--n", "20", "--num-features", "8"]
    cmd += ["--steps", "100000", "--record-every", "50", "--checkpoint-every", "1"]
    p = subprocess.Popen([*cmd, "--out", str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / "checkpoint.npz").exists()
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
        waited = time.monotonic() - t0
    finally:
        p.kill()
    err = p.stderr.read()
    assert rc == 143, err
    assert waited < 10  # chunks of about a second
    line = err.strip().splitlines()[-1]
    assert "SIGTERM" in line and "--resume" in line
    marker = read_marker(out)
    assert marker["status"] == "interrupted"
    with np.load(out / "checkpoint.npz") as f:
        assert json.loads(str(f["meta"]))["step"] == marker["checkpoint_step"]
    assert not [q for q in os.listdir(out) if ".tmp-" in q]
