"""``mmdflow flow --density``: density flows (svgd, ksd, srmmd) on the command line."""

import shutil
import sys

import jax
import numpy as np
import pytest
from _cli import PNG_MAGIC
from _cli import metrics as _metrics
from _cli import run as _run

from mmdflow import cli
from mmdflow.cli import _density

TINY = ["--n", "24", "--record-every", "3", "--quiet"]

#: a user's module of log-densities (imported from the current directory)
USER_MODULE = """
import jax.numpy as jnp


def logp(x):  # N(1, I) in any dimension
    return -0.5 * jnp.sum((x - 1.0) ** 2)


def nan_logp(x):
    return jnp.sum(x) * jnp.nan


def vector_logp(x):
    return -0.5 * x**2


not_a_function = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``mydens.py`` in a fresh current directory (imported from there, then forgotten)."""
    (tmp_path / "mydens.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    yield "mydens"
    sys.modules.pop("mydens", None)


@pytest.fixture(scope="module")
def svgd_runs(tmp_path_factory):
    """A 12-step and a 6-step SVGD run toward the banana (copy before changing)."""
    root = tmp_path_factory.mktemp("svgd")
    base = ["flow", "--method", "svgd", "--density", "banana", *TINY]
    for steps in (6, 12):
        assert cli.main([*base, "--steps", str(steps), "--out", str(root / str(steps))]) == 0
    return root


def test_svgd_banana_writes_everything(svgd_runs):
    out = svgd_runs / "12"
    names = {"particles.npy", "trajectory.npz", "metrics.json", "flow.png", "ksd.png"}
    assert names <= {p.name for p in out.iterdir()} and not (out / "mmd.png").exists()
    for png in ("flow.png", "ksd.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    m = _metrics(out)
    h = m["history"]
    assert "ksd2" in h and "mmd2" not in h and h["step"] == [0, 3, 6, 9, 12]
    assert h["ksd2"][-1] < 0.5 * h["ksd2"][0]
    s = m["settings"]
    assert s["method"] == "svgd" and s["density"] == "banana" and s["target"] is None
    assert s["kernel"]["type"] == "Gaussian" and s["exact_samples"] == 24
    assert "Liu & Wang" in s["bandwidth_rule"] and "exact samples" in s["bandwidth_rule"]
    ref = np.asarray(_density.resolve("banana").sample(jax.random.key(1), 24, 2))
    assert s["bandwidth"] == pytest.approx(_density.bandwidth(ref), rel=1e-5)
    assert s["step_size"] == pytest.approx(s["bandwidth"] ** 2)  # SVGDField's 1.0 x bw^2
    sm = m["summary"]
    assert sm["ksd2_end"] < sm["ksd2_start"]
    assert sm["mmd2_to_samples_end"] < sm["mmd2_to_samples_start"]
    assert sm["mean_error_end"] >= 0 and sm["cov_error_end"] >= 0


def test_resume_continues_exactly(tmp_path, capsys, svgd_runs):
    resumed = tmp_path / "resumed"
    shutil.copytree(svgd_runs / "6", resumed)
    base = ["flow", "--method", "svgd", "--density", "banana", *TINY, "--out", resumed]
    rc, out, err = _run(capsys, *base, "--steps", 12, "--resume")
    assert rc == 0, err
    assert "resumed at step 6" in out and "KSD^2" in out
    straight = svgd_runs / "12"
    np.testing.assert_array_equal(
        np.load(straight / "particles.npy"), np.load(resumed / "particles.npy")
    )
    ha, hb = _metrics(straight)["history"], _metrics(resumed)["history"]
    assert {k: v for k, v in ha.items() if k != "wall_time"} == {
        k: v for k, v in hb.items() if k != "wall_time"
    }
    # another density (or dimension) is another run
    rc, _, err = _run(capsys, *base[:4], "funnel", *base[5:], "--steps", 14, "--resume")
    assert rc == 2 and "--density 'funnel' differs" in err


def test_user_density_without_sampler_in_3d(tmp_path, capsys, user_module):
    out = tmp_path / "ksd"
    args = ["flow", "--method", "ksd", "--density", f"{user_module}:logp", "--dim", 3]
    rc, stdout, err = _run(capsys, *args, *TINY, "--steps", 6, "--out", out)
    assert rc == 0, err
    assert np.load(out / "particles.npy").shape == (24, 3)  # --source gaussian: N(0, I_3)
    m = _metrics(out)
    assert (
        m["settings"]["exact_samples"] == 0 and "source points" in m["settings"]["bandwidth_rule"]
    )
    assert "mmd2_to_samples_end" not in m["summary"]
    assert "no sampler" in m["summary"]["mmd2_to_samples_note"] and "KSD^2" in stdout
    assert m["history"]["ksd2"][-1] < m["history"]["ksd2"][0]
    assert (out / "flow.png").read_bytes()[:8] == PNG_MAGIC  # PCA of the final particles


def test_srmmd_toward_a_density(tmp_path, capsys):
    """``srmmd`` takes samples or, given ``--density``, a density (the Stein kernel): its
    ``--reg`` is then in units of ``bandwidth^-4`` (the sample flow's: ``bandwidth^-2``)."""
    out = tmp_path / "srmmd"
    args = ["flow", "--method", "srmmd", "--density", "mixture", *TINY, "--steps", 6]
    rc, stdout, err = _run(capsys, *args, "--reg", 0.5, "--out", out)
    assert rc == 0, err
    m = _metrics(out)
    s = m["settings"]
    assert s["kernel"]["type"] == "Gaussian" and "KSD^2" in stdout
    bw = s["bandwidth"]
    np.testing.assert_allclose(s["reg_absolute"], 0.5 / bw**4, rtol=1e-6)
    assert "bandwidth^-4" in s["reg_rule"] and s["alpha"] == 1.0
    assert m["history"]["ksd2"][-1] < m["history"]["ksd2"][0]
    assert (out / "ksd.png").read_bytes()[:8] == PNG_MAGIC


def _bad(tmp_path):
    three = tmp_path / "three.npy"
    np.save(three, np.zeros((10, 3)))
    svgd = ["--method", "svgd"]
    return {
        "unknown-name": ([*svgd, "--density", "nope"], "--density 'nope': unknown density"),
        "no-module": ([*svgd, "--density", "no_such_mod:f"], "cannot import module"),
        "no-function": ([*svgd, "--density", "mydens:nothing"], "has no attribute 'nothing'"),
        "not-callable": ([*svgd, "--density", "mydens:not_a_function"], "is not callable"),
        "nan": ([*svgd, "--density", "mydens:nan_logp"], "not finite"),
        "non-scalar": ([*svgd, "--density", "mydens:vector_logp"], "floating scalar"),
        "wrong-dim": ([*svgd, "--density", "mixture", "--dim", 3], "2-dimensional"),
        "source-dim": ([*svgd, "--density", "funnel", "--source", three, "--dim", 2], "d=3"),
        "density-sample-flow": (["--density", "banana"], "--density applies to the flows that"),
        "target-and-density": (
            ["--method", "srmmd", "--density", "banana", "--target", "rings"],
            "give one target",
        ),
        "srmmd-nan": (["--method", "srmmd", "--density", "mydens:nan_logp"], "not finite"),
        "target-density-flow": ([*svgd, "--target", "rings"], "--target does not apply"),
        "no-density": (svgd, "give --density NAME"),
        "dim-alone": (["--dim", 3], "--dim applies with --density"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown-name",
        "no-module",
        "no-function",
        "not-callable",
        "nan",
        "non-scalar",
        "wrong-dim",
        "source-dim",
        "density-sample-flow",
        "target-and-density",
        "srmmd-nan",
        "target-density-flow",
        "no-density",
        "dim-alone",
    ],
)
def test_bad_input_one_line_error(tmp_path, capsys, user_module, case):
    args, needle = _bad(tmp_path)[case]
    out = tmp_path / "runs" / "bad"
    rc, stdout, err = _run(capsys, "flow", *args, "--n", 8, "--steps", 2, "--out", out)
    lines = err.strip().splitlines()
    assert rc == 2 and stdout == "" and len(lines) == 1, err
    assert lines[0].startswith("mmdflow: error: ") and needle in lines[0], lines[0]
    assert not out.exists()
