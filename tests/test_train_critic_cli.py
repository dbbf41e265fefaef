"""`mmdflow train --critic {mmd-gp,smmd}`: an MMD GAN on any [N, d] .npy, outputs, exact resume
with the critic's state, one-line errors."""

import json

import numpy as np
import pytest

from mmdflow import cli

ARGS = ["train", "--n", "200", "--batch-size", "16", "--eval-every", "2", "--quiet"]
ARGS += ["--critic-steps", "2", "--checkpoint-every", "2"]


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "my.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32) + 1.0)
    return str(path)


def test_mmd_gan_on_a_npy_file_resumes_exactly(tmp_path, target, capsys):
    opts = [*ARGS, "--target", target, "--critic", "mmd-gp", "--optimizer", "adam"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main([*opts, "--steps", "4", "--out", str(full)]) == 0
    out = capsys.readouterr().out
    assert "kernelized adam critic mmd-gp" in out and "critic.png" in out
    for name in ("samples.npy", "metrics.json", "samples.png", "mmd.png", "critic.png"):
        assert (full / name).stat().st_size > 0, name
    m = json.loads((full / "metrics.json").read_text())
    assert m["settings"]["critic"] == "mmd-gp" and m["settings"]["optimizer"] == "adam"
    assert m["settings"]["lr"] == 3e-3 and m["settings"]["critic_steps"] == 2
    assert len(m["history"]["critic_mmd2"]) == len(m["history"]["critic_penalty"]) == 4
    assert np.load(full / "samples.npy").shape == (2000, 3)
    # 2 steps, then resume to 4: the generator *and* critic state continue exactly
    assert cli.main([*opts, "--steps", "2", "--out", str(part)]) == 0
    assert cli.main([*opts, "--steps", "4", "--out", str(part), "--resume"]) == 0
    np.testing.assert_array_equal(np.load(part / "samples.npy"), np.load(full / "samples.npy"))
    m2 = json.loads((part / "metrics.json").read_text())
    assert m2["history"]["critic_mmd2"] == m["history"]["critic_mmd2"]
    capsys.readouterr()
    # another critic would not continue the same run
    smmd = [*ARGS, "--target", target, "--critic", "smmd", "--optimizer", "adam", "--steps", "6"]
    assert cli.main([*smmd, "--out", str(part), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--critic 'smmd' differs" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--critic", "wgan"], "--critic"),
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--critic", "smmd", "--penalty", "-1"], "--penalty"),
        (["--critic", "mmd-gp", "--critic-steps", "0"], "--critic-steps"),
        (["--critic", "mmd-gp", "--critic-lr", "nan"], "--critic-lr"),
        (["--critic", "mmd-gp", "--devices", "1"], "--devices"),
    ],
)
def test_bad_critic_options_are_one_line_errors(tmp_path, capsys, extra, match):
    assert cli.main([*ARGS, "--steps", "1", *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_cosine_schedule_is_recorded_and_cannot_be_extended(tmp_path, target, capsys):
    opts = [*ARGS, "--target", target, "--lr-schedule", "cosine", "--out", str(tmp_path / "c")]
    assert cli.main([*opts, "--steps", "2"]) == 0
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert m["settings"]["lr_schedule"] == "cosine"
    assert m["settings"]["lr_schedule_steps"] == 2
    capsys.readouterr()
    assert cli.main([*opts, "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot be extended" in err and err.count("\n") == 1
