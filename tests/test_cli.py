"""The ``mmdflow`` command line: outputs, metrics, bad input, atomic output directories."""

import io
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from _cli import PNG_MAGIC
from _cli import metrics as _metrics
from _cli import run as _run
from _files import BAD_POINT_FILES, bad_point_files

from mmdflow import cli, fields, plots
from mmdflow.cli import _rundir
from mmdflow.fields import _sobolev as FS

HISTORY_KEYS = {"step", "mmd2", "kinetic", "critic", "wall_time"}


def _png_ok(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _leftovers(parent: Path) -> list[str]:
    """Temporary staging directories the CLI might have left behind."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _check_history(m: dict) -> dict:
    h = m["history"]
    assert HISTORY_KEYS <= set(h)
    lengths = {len(v) for v in h.values()}
    assert len(lengths) == 1 and lengths.pop() >= 2
    assert all(isinstance(v, list) for v in h.values())
    return h


# --------------------------------------------------------------------------- flow


def test_flow_sobolev_writes_everything(tmp_path, capsys):
    out = tmp_path / "runs" / "demo"  # parent created on demand
    rc, stdout, err = _run(capsys, "flow", "--n", 200, "--steps", 20, "--out", out, "--quiet")
    assert rc == 0, err
    assert err == ""  # --quiet: no progress bar
    names = {"particles.npy", "trajectory.npz", "metrics.json", "flow.png", "mmd.png"}
    assert names <= {p.name for p in out.iterdir()}
    x = np.load(out / "particles.npy")
    assert x.shape == (200, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    with np.load(out / "trajectory.npz") as t:
        snaps, steps = t["snapshots"], t["steps"]
    assert snaps.ndim == 3 and snaps.shape[1:] == (200, 2)
    assert steps[0] == 0 and steps[-1] == 20 and len(steps) == len(snaps)
    np.testing.assert_array_equal(snaps[-1], x)
    assert _png_ok(out / "flow.png") and _png_ok(out / "mmd.png")

    m = _metrics(out)
    h = _check_history(m)
    assert h["step"] == steps.tolist()
    s = m["settings"]
    # every default is resolved and recorded
    assert s["method"] == "sobolev" and s["source"] == "gaussian" and s["target"] == "8gaussians"
    assert (s["n_particles"], s["d"], s["steps"]) == (200, 2, 20)
    assert s["step_size"] == FS.STEP_SIZE and s["reg"] == FS.REG
    assert s["bandwidth"] > 0 and "median" in s["bandwidth_rule"]
    assert s["reg_absolute"] == pytest.approx(s["reg"] / s["bandwidth"] ** 2)  # scale-free reg
    assert s["kernel"]["type"] == "MixtureRBF" and len(s["kernel"]["bandwidths"]) == 4
    # n*d = 400 > EXACT_MAX_SIZE: random features, and the rule says so
    assert s["critic"] == "rff" and s["num_features"] == FS.DEFAULT_NUM_FEATURES
    assert "auto" in s["num_features_rule"] and "every step" in s["features"]
    t = m["timings"]
    for key in ("total_s", "flow_s", "first_chunk_s", "compile_s_estimate", "per_step_s"):
        assert t[key] >= 0
    # Sobolev descent reduces MMD^2, already in 20 steps
    assert h["mmd2"][-1] < 0.1 * h["mmd2"][0]
    assert m["summary"]["mmd2_end"] < m["summary"]["mmd2_start"]
    assert m["summary"]["mmd2_reduction"] > 10
    # one summary line on stdout naming the pictures
    assert len(stdout.strip().splitlines()) == 1
    assert "MMD^2" in stdout and "flow.png" in stdout
    assert _leftovers(out.parent) == []


def test_flow_mmd_method_npy_files_and_pca(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src, tgt = tmp_path / "src.npy", tmp_path / "tgt.npy"
    np.save(src, rng.normal(size=(150, 3)))
    np.save(tgt, rng.normal(size=(90, 3)) * 0.5 + 1.0)
    out = tmp_path / "out"
    out.mkdir()  # an existing *empty* directory is fine without --overwrite
    rc, _, err = _run(
        capsys,
        "flow",
        "--method",
        "mmd",
        "--source",
        src,
        "--target",
        tgt,
        "--n",
        120,
        "--steps",
        10,
        "--record-every",
        5,
        "--out",
        out,
    )
    assert rc == 0, err
    x = np.load(out / "particles.npy")
    assert x.shape == (120, 3)  # source file subsampled to --n
    rows = np.load(out / "source_indices.npy")  # ... and the rows kept are saved
    assert rows.shape == (120,) and len(set(rows.tolist())) == 120
    with np.load(out / "trajectory.npz") as t:
        np.testing.assert_array_equal(t["snapshots"][0], np.load(src)[rows].astype(np.float32))
    assert not (out / "target_indices.npy").exists()  # 90 rows < --n: all kept, in order
    assert "source_indices.npy" in _metrics(out)["files"]
    m = _metrics(out)
    s = m["settings"]
    assert s["method"] == "mmd" and s["n_target"] == 90 and s["d"] == 3
    assert s["step_size"] == pytest.approx(fields._mmd.STEP_FACTOR * s["bandwidth"] ** 2)
    assert _check_history(m)["step"] == [0, 5, 10]
    assert m["history"]["mmd2"][-1] < m["history"]["mmd2"][0]
    assert _png_ok(out / "flow.png")  # d = 3: PCA projection


def test_flow_exact_critic(tmp_path, capsys):
    out = tmp_path / "exact"
    rc, _, err = _run(
        capsys,
        "flow",
        "--n",
        40,
        "--steps",
        4,
        "--num-features",
        "exact",
        "--kernel",
        "gaussian",
        "--bandwidth",
        1.5,
        "--out",
        out,
        "--quiet",
    )
    assert rc == 0, err
    s = _metrics(out)["settings"]
    assert s["critic"] == "exact" and s["num_features"] is None
    assert (
        s["kernel"] == {"type": "Gaussian", "bandwidths": [1.5]} and s["bandwidth_rule"] == "user"
    )


@pytest.mark.slow
def test_flow_neural_sobolev(tmp_path, capsys):
    out = tmp_path / "neural"
    rc, _, err = _run(
        capsys, "flow", "--method", "neural-sobolev", "--n", 64, "--steps", 3, "--out", out
    )
    assert rc == 0, err
    assert np.load(out / "particles.npy").shape == (64, 2)
    assert _metrics(out)["settings"]["method"] == "neural-sobolev"


@pytest.mark.slow
def test_flow_default_size_reduces_mmd_100x(tmp_path, capsys):
    """The documented default run: n=1000, 500 steps, gaussian -> 8gaussians."""
    out = tmp_path / "demo"
    rc, _, err = _run(capsys, "flow", "--out", out)
    assert rc == 0, err
    m = _metrics(out)
    assert m["settings"]["n_particles"] == 1000 and m["settings"]["steps"] == 500
    assert m["summary"]["mmd2_reduction"] >= 100


# --------------------------------------------------------------------------- color transfer


def test_color_transfer_writes_everything(tmp_path, capsys):
    import matplotlib.image as mpimg

    out = tmp_path / "color"
    rc, stdout, err = _run(
        capsys,
        "color-transfer",
        "--max-size",
        40,
        "--n-colors",
        150,
        "--steps",
        8,
        "--out",
        out,
        "--quiet",
    )
    assert rc == 0, err
    assert {"recolored.png", "comparison.png", "metrics.json"} <= {p.name for p in out.iterdir()}
    m = _metrics(out)
    s = m["settings"]
    h, w, _ = s["working_source_shape"]
    assert max(h, w) == 40 and s["source"] == "astronaut" and s["target"] == "coffee"
    img = mpimg.imread(out / "recolored.png")
    assert img.shape[:2] == (h, w)
    assert _png_ok(out / "comparison.png")
    hist = _check_history(m)
    assert hist["mmd2"][-1] < hist["mmd2"][0]
    summ = m["summary"]
    assert summ["mmd2_pixels_end"] < summ["mmd2_pixels_start"]  # all pixels moved, not just the fit
    assert s["n_pixels_moved"] == h * w
    assert len(stdout.strip().splitlines()) == 1 and "recolored.png" in stdout


# --------------------------------------------------------------------------- bad input


def test_flow_mmd_impl_choices_agree(tmp_path, capsys):
    # --impl reaches the MMD flow and the recorded MMD^2: dense (reference), blocked and the
    # fused Pallas kernels (interpret mode on CPU) move the particles alike
    runs = {}
    for impl in ("dense", "blocked", "pallas"):
        out = tmp_path / impl
        argv = ["flow", "--method", "mmd", "--n", 48, "--steps", 3, "--impl", impl, "--out", out]
        rc, _, err = _run(capsys, *argv, "--quiet")
        assert rc == 0, err
        # one warning line when Pallas would run in interpret mode (off a GPU)
        interpreted = impl == "pallas" and jax.default_backend() != "gpu"
        assert err == ("" if not interpreted else err.splitlines()[0] + "\n")
        assert ("interpret mode" in err) == interpreted
        s = _metrics(out)["settings"]
        assert (s["impl"], s["impl_resolved"]) == (impl, impl)
        runs[impl] = (np.load(out / "particles.npy"), _metrics(out)["history"]["mmd2"])
    x_ref, mmd_ref = runs["dense"]
    for impl in ("blocked", "pallas"):
        np.testing.assert_allclose(runs[impl][0], x_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(runs[impl][1], mmd_ref, rtol=1e-3, atol=1e-7)
    # the flow moved (the comparison is not between unmoved particles)
    assert mmd_ref[-1] < 0.9 * mmd_ref[0]


def _bad_inputs(tmp_path):
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]))
    three = tmp_path / "three.npy"
    np.save(three, np.zeros((10, 3)))
    return {
        "unknown-name": (["--source", "no-such-shape"], "no-such-shape"),
        "nan-npy": (["--target", nan], "non-finite"),
        "d-mismatch": (["--source", three], "dimension mismatch"),
        "step-size-0": (["--step-size", 0], "--step-size"),
        "reg-negative": (["--reg", -1], "--reg"),
        "n-1": (["--n", 1], "--n"),
        "bad-method": (["--method", "nope"], "--method"),
        "devices-too-many": (["--devices", 4096], "--devices 4096: only"),
        "devices-0": (["--devices", 0], "--devices"),
        "reg-mmd": (["--method", "mmd", "--reg", 0.1], "--reg does not apply to --method mmd"),
        "impl-devices": (["--devices", 1, "--impl", "dense"], "--impl dense applies"),
        "impl-bad": (["--impl", "nope"], "--impl"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown-name",
        "nan-npy",
        "d-mismatch",
        "step-size-0",
        "reg-negative",
        "n-1",
        "bad-method",
        "devices-too-many",
        "devices-0",
        "reg-mmd",
        "impl-devices",
        "impl-bad",
    ],
)
def test_bad_input_one_line_error_and_no_output(tmp_path, capsys, case):
    args, needle = _bad_inputs(tmp_path)[case]
    out = tmp_path / "runs" / "bad"
    rc, stdout, err = _run(capsys, "flow", *args, "--steps", 2, "--out", out)
    assert rc in (1, 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmdflow: error: ")
    assert needle in lines[0]
    assert stdout == ""
    assert not out.exists() and not out.parent.exists()


@pytest.mark.parametrize("name", sorted(BAD_POINT_FILES))
def test_bad_point_files_are_one_line_errors(tmp_path, capsys, name):
    needle = bad_point_files(tmp_path)[name]
    out = tmp_path / "out"
    for option in ("--source", "--target"):
        rc, stdout, err = _run(capsys, "flow", option, tmp_path / name, "--out", out)
        lines = err.strip().splitlines()
        assert rc == 2 and stdout == "" and len(lines) == 1, err
        assert lines[0].startswith(f"mmdflow: error: {option} ") and needle in lines[0]
        assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [["--source", "no-such-image"], ["--target", "missing.png"], ["--reg", "-1"]],
)
def test_color_transfer_bad_input(tmp_path, capsys, args):
    out = tmp_path / "bad"
    rc, _, err = _run(capsys, "color-transfer", *args, "--out", out)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("mmdflow: error: ")
    assert not out.exists()


def test_failure_during_run_leaves_nothing(tmp_path, capsys, monkeypatch):
    from mmdflow import flows

    def boom(*args, **kwargs):
        raise FloatingPointError("simulated failure\nsecond line")

    monkeypatch.setattr(flows, "run", boom)
    out = tmp_path / "sub" / "out"
    rc, _, err = _run(capsys, "flow", "--n", 20, "--steps", 2, "--out", out)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "simulated failure" in lines[0]
    assert not out.exists() and not (tmp_path / "sub").exists()
    assert _leftovers(tmp_path) == []


def test_diverging_flow_is_an_error(tmp_path, capsys, monkeypatch):
    # a run that returns non-finite particles without flagging them: no outputs at all
    # (flows.run itself stops at the last finite state: tests/test_flow_resume.py)
    from mmdflow import flows

    def nan_run(stepper, x0, y, *, state, record_trajectory, **kwargs):
        x = np.full(state.x.shape, np.nan, np.float32)
        hist = {"step": np.array([0, 2]), "mmd2": np.array([1.0, np.nan])}
        hist["trajectory"] = np.stack([np.asarray(state.x), x])
        return state._replace(x=x, count=state.count + 2), hist

    monkeypatch.setattr(flows, "run", nan_run)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "flow", "--n", 20, "--steps", 2, "--out", out)
    assert rc == 1 and "diverged" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and _leftovers(tmp_path) == []


def test_interrupt_stops_at_a_safe_point_and_cleans_up(tmp_path, capsys, monkeypatch):
    import signal

    from mmdflow import flows

    def interrupted_run(stepper, x0, y, *, state, on_chunk, **kwargs):
        signal.raise_signal(signal.SIGINT)  # only recorded by the CLI's handler ...
        on_chunk(1, state, lambda: {})  # ... and raised here, between chunks
        raise AssertionError("not reached")

    monkeypatch.setattr(flows, "run", interrupted_run)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)
    rc, _, err = _run(capsys, "flow", "--n", 20, "--steps", 2, "--out", out)
    assert rc == 130 and "interrupted" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1
    # the checkpoint of the last chunk, nothing else
    assert sorted(p.name for p in out.iterdir()) == [_rundir.MARKER, "checkpoint.npz"]
    assert _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is before  # restored (the worker's, not assumed)


def test_nonempty_out_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["flow", "--n", 20, "--steps", 2, "--num-features", 16, "--fixed-features"]
    rc, _, err = _run(capsys, *args, "--out", out, "--record-every", 2)
    assert rc == 0, err
    (out / "keep.txt").write_text("precious")  # a user's file in a run directory
    rc, _, err = _run(capsys, *args, "--out", out)
    assert rc == 2 and "--overwrite" in err
    rc, _, err = _run(capsys, *args, "--out", out, "--overwrite")
    assert rc == 0, err
    assert (out / "keep.txt").read_text() == "precious"  # --overwrite replaces only own files
    assert (out / "particles.npy").is_file()
    assert _leftovers(tmp_path) == []
    m = _metrics(out)
    s = m["settings"]
    assert s["num_features"] == 16 and "drawn once" in s["features"]
    assert s["record_every"] == 1  # the new run's metrics, not the old ones


# --------------------------------------------------------------------------- pieces


def test_progress_bar():
    buf = io.StringIO()
    bar = cli.ProgressBar(10, label="t", enabled=True, stream=buf, min_interval=0.0)
    bar.start()
    bar.update(5, {"mmd2": 0.5})
    bar.update(10, {"mmd2": 0.25})
    bar.close()
    text = buf.getvalue()
    assert "\r" in text and "10/10" in text and "100%" in text and "2.500e-01" in text
    assert text.endswith("\n")
    quiet = io.StringIO()  # not a TTY: disabled by default
    bar = cli.ProgressBar(10, stream=quiet)
    bar.start()
    bar.update(10, {"mmd2": 0.1})
    bar.close()
    assert quiet.getvalue() == ""


def test_mmd2_change_says_higher_when_it_rose():
    from mmdflow.cli._inputs import _fmt_change

    assert _fmt_change(0.5, 1e-3) == "500x lower"
    assert _fmt_change(0.5, 0.25) == "2.00x lower"
    assert _fmt_change(0.4766, 0.958) == "2.01x higher"
    assert _fmt_change(1e-3, 0.5) == "500x higher"
    assert _fmt_change(0.5, 0.0) == "n/a"


def test_resolve_num_features():
    assert cli.resolve_num_features("auto", 10, 2)[0] is None
    n_big = FS.EXACT_MAX_SIZE // 2 + 1
    assert cli.resolve_num_features("auto", n_big, 2)[0] == FS.DEFAULT_NUM_FEATURES
    assert cli.resolve_num_features("exact", 10_000, 2)[0] is None
    assert cli.resolve_num_features(64, 10, 2)[0] == 64


def test_select_snapshots():
    mmd = [1.0, 1e-2, 1e-3, 5e-4, 1e-4, 9e-5, 1e-5]
    idx = plots.select_snapshots(mmd, len(mmd), 5)
    assert idx[0] == 0 and idx[-1] == len(mmd) - 1 and idx == sorted(set(idx))
    assert 3 <= len(idx) <= 5
    assert plots.select_snapshots(None, 11, 5) == [0, 2, 5, 8, 10]
    assert plots.select_snapshots([1.0, 0.0], 2, 5) == [0, 1]


def test_python_m_help():
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mmdflow", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "flow" in res.stdout and "color-transfer" in res.stdout
    # building the parser imports no flow's module beyond its needs: not the neural field's
    # Flax (about 1.5 s; its --density help names the density flows when it is shown)
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in res.stderr.splitlines()}
    assert "mmdflow.cli" in imported and "flax" not in imported and "optax" not in imported
    res = subprocess.run(
        [sys.executable, "-m", "mmdflow", "flow", "--step-size", "0", "--out", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("mmdflow: error: ")


def test_param_sets_any_field_hyperparameter_and_resumes(tmp_path, capsys):
    """``--param NAME=VALUE`` reaches the field (settings read the built field's attributes:
    DrMMD's ``adaptive`` is off by default), is recorded, and a resume must repeat it."""
    out = tmp_path / "p"
    base = ["flow", "--method", "drmmd", "--n", 40, "--steps", 4, "--quiet"]
    rc, _, err = _run(
        capsys, *base, "--param", "adaptive=True", "--param", "cg_tol=1e-7", "--out", out
    )
    assert rc == 0, err
    s = _metrics(out)["settings"]
    assert s["adaptive"] is True and s["cg_tol"] == 1e-7
    assert s["params"] == {"adaptive": "True", "cg_tol": "1e-07"}
    rc, _, err = _run(capsys, *base, "--steps", 6, "--resume", "--out", out)
    assert rc == 2 and "--param [] differs" in err
    args = [*base, "--steps", 6, "--resume", "--param", "adaptive=True", "--param", "cg_tol=1e-7"]
    args += ["--out", out]
    rc, _, err = _run(capsys, *args)
    assert rc == 0, err
    rc, _, err = _run(capsys, *base, "--param", "nope=1", "--out", tmp_path / "bad")
    assert rc == 2 and "--param 'nope=1'" in err and "adaptive" in err
