"""`mmdflow train`: outputs, exact resume, bad input."""

import json

import numpy as np
import pytest

from mmdflow import cli, sharding, train

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
        (["--devices", "1", "--direction", "param-sobolev"], "--devices"),
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
    real = sharding.direction_fn
    monkeypatch.setattr(sharding, "direction_fn", lambda mesh: calls.append(mesh) or real(mesh))
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
