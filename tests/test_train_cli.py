"""`mmdflow train`: outputs, exact resume, bad input."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mmdflow import _checkpoint, cli, train
from mmdflow.cli import _flow as cli_flow
from mmdflow.cli._inputs import _fmt_change
from mmdflow.cli._rundir import MARKER, read_marker

ARGS = ["train", "--steps", "6", "--n", "300", "--batch-size", "32", "--eval-every", "3", "--quiet"]


def test_train_writes_outputs_and_resumes_exactly(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main([*ARGS, "--out", str(full)]) == 0
    for name in ("samples.npy", "metrics.json", "samples.png", "mmd.png", "checkpoint.npz"):
        assert (full / name).stat().st_size > 0, name
    samples = np.load(full / "samples.npy")
    assert samples.shape == (2000, 2)
    m = json.loads((full / "metrics.json").read_text())
    assert m["history"]["eval_step"] == [0, 3, 6]
    assert len(m["history"]["velocity_norm"]) == 6
    assert m["settings"]["direction"] == "kernelized"
    assert m["history"]["eval_mmd2"][-1] < m["history"]["eval_mmd2"][0]
    # 3 steps, then resume to 6: identical to the uninterrupted run
    a = [*ARGS, "--out", str(part)]
    a[a.index("--steps") + 1] = "3"
    assert cli.main(a) == 0
    assert cli.main([*ARGS, "--out", str(part), "--resume"]) == 0
    np.testing.assert_array_equal(np.load(part / "samples.npy"), samples)
    m2 = json.loads((part / "metrics.json").read_text())
    assert m2["history"]["eval_mmd2"] == m["history"]["eval_mmd2"]
    assert m2["settings"]["cg_maxiter"] == train.GeneratorTrainer.cg_maxiter
    assert "held-out MMD^2" in capsys.readouterr().out
    # a resume with another CG budget would not continue the same run
    assert (
        cli.main([*ARGS, "--out", str(part), "--resume", "--steps", "8", "--cg-maxiter", "7"]) == 2
    )
    assert "--cg-maxiter 7 differs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--target", "nope"], "--target"),
        (["--reg", "0"], "--reg"),
        (["--lr", "-1"], "--lr"),
        (["--direction", "adam"], "--direction"),
        (["--solver", "cholesky"], "solver"),
        (["--cg-maxiter", "0"], "--cg-maxiter"),
        (["--resume"], "checkpoint"),
        (["--devices", "999"], "--devices 999"),
        (["--devices", "1", "--critic", "mmd-gp"], "--devices"),
    ],
)
def test_train_bad_input(tmp_path, capsys, extra, match):
    out = tmp_path / "run"
    assert cli.main([*ARGS, "--out", str(out), *extra]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert match in err
    assert not out.exists()


def test_train_devices_runs_the_sharded_step(tmp_path, monkeypatch):
    # one device here (the 8-device equality, all directions, is in test_sharding.py). mmd-gd
    # has no solve, so the data-parallel step (shard_map, collectives) must give the
    # single-device samples (truncated CG is too sensitive to summation order for this)
    args = [*ARGS, "--steps", "2", "--eval-every", "2"]
    calls = []
    real = cli_flow._make_mesh
    monkeypatch.setattr(cli_flow, "_make_mesh", lambda num: calls.append(real(num)) or calls[-1])
    runs = {}
    for direction in ("mmd-gd",):
        for dv in ([], ["--devices", "1"]):
            out = tmp_path / f"{direction}{len(dv)}"
            assert cli.main([*args, "--direction", direction, "--out", str(out), *dv]) == 0
            runs[direction, len(dv)] = np.load(out / "samples.npy")
            m = json.loads((out / "metrics.json").read_text())
            assert m["settings"]["devices"] == 1
            assert m["history"]["eval_mmd2"][-1] < m["history"]["eval_mmd2"][0]
    assert [m.devices.size for m in calls] == [1]
    np.testing.assert_allclose(runs["mmd-gd", 2], runs["mmd-gd", 0], rtol=1e-4, atol=1e-5)


def _hist(m):
    return {k: v for k, v in m["history"].items() if k != "time"}


def _interrupt_at(monkeypatch, step, action):
    """Runs ``action()`` inside the training loop, right after step ``step``."""
    real = train.GeneratorTrainer.step

    def step_then_act(self, state, y):
        out = real(self, state, y)
        if int(out[0].step) == step:
            action()
        return out

    monkeypatch.setattr(train.GeneratorTrainer, "step", step_then_act)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A 6-step run to compare interrupted and resumed runs with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    return np.load(out / "samples.npy"), json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("sig", ["SIGINT"])  # SIGTERM: the subprocess test below
def test_interrupt_keeps_a_checkpoint_and_resume_is_exact(
    tmp_path, capsys, monkeypatch, straight, sig
):
    out = tmp_path / "run"
    signum = getattr(signal, sig)
    with monkeypatch.context() as mp:
        _interrupt_at(mp, 4, lambda: signal.raise_signal(signum))
        rc = cli.main([*ARGS, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 128 + signum
    assert len(err.splitlines()) == 1 and sig in err, err
    assert "checkpoint of step 4" in err and "--resume" in err
    assert read_marker(out)["status"] == "interrupted"
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "checkpoint.npz"]
    assert _checkpoint.read_meta(out / "checkpoint.npz")["steps"] == 4
    assert cli.main([*ARGS, "--out", str(out), "--resume"]) == 0
    samples, m = straight
    np.testing.assert_array_equal(np.load(out / "samples.npy"), samples)
    m2 = json.loads((out / "metrics.json").read_text())
    assert _hist(m2) == _hist(m)
    assert read_marker(out)["status"] == "complete"


def test_periodic_checkpoints_survive_a_crash(tmp_path, capsys, monkeypatch, straight):
    out = tmp_path / "run"
    args = [*ARGS, "--out", str(out), "--checkpoint-every", "2"]

    def crash():
        raise RuntimeError("power cut")

    with monkeypatch.context() as mp:
        _interrupt_at(mp, 5, crash)
        assert cli.main(args) == 1
    assert "power cut" in capsys.readouterr().err
    meta = _checkpoint.read_meta(out / "checkpoint.npz")
    assert meta["steps"] == 4 and meta["args"]["checkpoint_every"] == 2
    assert meta["run"]["lr"] == 0.5 and meta["run"]["bandwidth"] > 0
    # --checkpoint-every may change on --resume
    assert cli.main([*args[:-1], "7", "--resume"]) == 0
    samples, m = straight
    np.testing.assert_array_equal(np.load(out / "samples.npy"), samples)
    assert _hist(json.loads((out / "metrics.json").read_text())) == _hist(m)


_SIGTERM_RUN = """
import sys
from mmdflow import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_real_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    args = [*ARGS, "--steps", "100000", "--checkpoint-every", "1", "--out", str(out)]
    p = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_RUN, *args], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists():
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)
    finally:
        p.kill()
    err = p.stderr.read().strip()
    assert rc == 143, err
    assert "SIGTERM" in err and "continue with --resume" in err
    step = _checkpoint.read_meta(out / "checkpoint.npz")["steps"]
    assert f"checkpoint of step {step}" in err and 1 <= step < 100000
    assert read_marker(out)["status"] == "interrupted"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 2-step grad-penalty run (its solver settings count) on a .npy target."""
    root = tmp_path_factory.mktemp("base")
    np.save(root / "t.npy", np.random.default_rng(0).normal(size=(150, 2)).astype(np.float32))
    args = [*ARGS, "--steps", "2", "--eval-every", "2", "--direction", "grad-penalty"]
    args += ["--target", str(root / "t.npy"), "--out", str(root / "run")]
    assert cli.main(args) == 0
    return root, args


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize(
    ("change", "old"),
    [
        (["--direction", "kernelized"], "--direction 'grad-penalty'"),
        (["--n", "301"], "--n 300"),
        (["--batch-size", "16"], "--batch-size 32"),
        (["--reg", "0.02"], "--reg 0.01"),
        (["--lr", "0.4"], "--lr 0.5"),
        (["--bandwidth", "2"], "--bandwidth "),
        (["--seed", "1"], "--seed 0"),
        (["--eval-every", "1"], "--eval-every 2"),
        (["--solver", "cg"], "--solver 'auto'"),
        (["--cg-maxiter", "7"], "--cg-maxiter 20"),
        (["--devices", "1"], "no --devices"),
        (["--target", "8gaussians"], "--target '"),
    ],
)
def test_resume_refuses_changed_options(tmp_path, capsys, base_run, change, old):
    root, args = base_run
    out = tmp_path / "run"
    shutil.copytree(root / "run", out)
    before = _snapshot(out)
    args = [*args[:-1], str(out), "--resume", "--steps", "4"]
    capsys.readouterr()
    assert cli.main([*args, *change]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{change[0]} " in err and old in err and "differs from the run" in err, err
    assert "only --steps, --quiet, --checkpoint-every may change" in err
    assert _snapshot(out) == before  # metrics.json keeps the run's options


def test_resume_checks_the_target_data_not_the_file_name(tmp_path, capsys):
    y = np.random.default_rng(0).normal(size=(150, 2)).astype(np.float32)
    np.save(tmp_path / "t.npy", y)
    args = [*ARGS, "--steps", "2", "--out", str(tmp_path / "run")]
    assert cli.main([*args, "--target", str(tmp_path / "t.npy")]) == 0
    (tmp_path / "t.npy").rename(tmp_path / "moved.npy")  # same data elsewhere: fine
    resume = [*args, "--resume", "--steps", "3", "--target"]
    assert cli.main([*resume, str(tmp_path / "moved.npy")]) == 0
    bw = repr(json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["bandwidth"])
    np.save(tmp_path / "moved.npy", y + 1.0)  # other data (and the same bandwidth)
    capsys.readouterr()
    assert cli.main([*resume, str(tmp_path / "moved.npy"), "--bandwidth", bw, "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "data of --target" in err and "differ" in err


def test_diverged_run_exits_1_and_keeps_the_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*ARGS, "--lr", "1e6", "--checkpoint-every", "2", "--out", str(out)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training diverged" in err, err
    assert "step 3" in err and "--lr" in err and "checkpoint of step 2 is kept" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["diverged"]["kind"] == "escaped"
    assert m["checkpoint_step"] == 2 and m["history"]["eval_step"] == [0, 3]
    assert _checkpoint.read_meta(out / "checkpoint.npz")["steps"] == 2
    assert not (out / "samples.npy").exists()
    assert read_marker(out)["status"] == "diverged"


def test_summary_says_lower_or_higher():
    assert _fmt_change(2.0, 1.0) == "2.00x lower"
    assert _fmt_change(1.0, 1.5) == "1.50x higher"
    assert _fmt_change(1.0, -1e-4) == "n/a"  # the unbiased estimate can be < 0


@pytest.mark.parametrize(("d", "scale"), [(1, 1.0), (10, 1.0), (64, 0.4), (64, 3.0)], ids=str)
def test_any_dimension_trains_and_plots(tmp_path, capsys, d, scale):
    # d = 64 inside [0, 1] (scale 0.4 around 0.5) and outside (scale 3)
    y = 0.5 + scale * (np.random.default_rng(d).uniform(size=(120, d)) - 0.5)
    np.save(tmp_path / "t.npy", y.astype(np.float32))
    out = tmp_path / "run"
    args = ["train", "--target", str(tmp_path / "t.npy"), "--steps", "1", "--eval-every", "1"]
    assert cli.main([*args, "--batch-size", "8", "--quiet", "--out", str(out)]) == 0
    assert np.load(out / "samples.npy").shape == (2000, d)
    assert (out / "samples.png").stat().st_size > 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["d"] == d and m["settings"]["n_eval"] == 24


@pytest.mark.parametrize(("rows", "rc"), [(2, 2), (99, 2), (100, 0)])
def test_target_minimum_rows(tmp_path, capsys, rows, rc):
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(rows, 2)))
    out = tmp_path / "run"
    args = ["train", "--target", str(tmp_path / "t.npy"), "--steps", "1", "--eval-every", "1"]
    assert cli.main([*args, "--batch-size", "8", "--quiet", "--out", str(out)]) == rc
    err = capsys.readouterr().err.strip()
    if rc:
        assert len(err.splitlines()) == 1 and f"has {rows} rows" in err and "at least 100" in err
        assert not out.exists()
    else:
        m = json.loads((out / "metrics.json").read_text())
        assert (m["settings"]["n_train"], m["settings"]["n_eval"]) == (80, 20)


def test_n_is_the_number_of_training_samples_and_plots_have_labels(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    labels = []
    real = Figure.savefig

    def savefig(fig, path, **kw):
        labels.append([(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes])
        return real(fig, path, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "run"
    assert cli.main([*ARGS, "--steps", "1", "--out", str(out)]) == 0
    s = json.loads((out / "metrics.json").read_text())["settings"]
    assert (s["n_train"], s["n_eval"]) == (300, 2000)
    assert labels == [[("x1", "x2")], [("step", "held-out MMD² (unbiased)")]]
