"""The ``mmdflow`` argument parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mmdflow.cli._color import _cmd_color_transfer
from mmdflow.cli._common import (
    COLOR_REG,
    MIXTURE_FACTORS,
    _int_at_least,
    _nonneg_float,
    _num_features,
    _Parser,
    _positive_float,
)
from mmdflow.cli._flow import _cmd_flow, _density_methods
from mmdflow.cli._rundir import add_resume_options
from mmdflow.cli._train import add_parser as add_train_parser
from mmdflow.densities import DENSITIES
from mmdflow.fields._sobolev import DEFAULT_NUM_FEATURES, EXACT_MAX_SIZE, REG, STEP_SIZE
from mmdflow.flows import FLOWS


class _Deferred:
    """Help text computed when argparse formats it (``%(name)s`` of an action attribute)."""

    def __init__(self, text: Callable[[], str]):
        self._text = text

    def __str__(self) -> str:
        return self._text()


def _add_common(
    p: argparse.ArgumentParser, *, steps: int, kernel: str, kernel_note: str, record_help: str
) -> None:
    p.add_argument(
        "--steps", type=_int_at_least(1), default=steps, help=f"number of steps (default {steps})"
    )
    p.add_argument(
        "--kernel",
        choices=("mixture", "gaussian"),
        default=kernel,
        help="'mixture': sum of Gaussians with bandwidths bandwidth x "
        f"{{{', '.join(f'{f:g}' for f in MIXTURE_FACTORS)}}}; 'gaussian': a single "
        f"Gaussian (default {kernel}: {kernel_note})",
    )
    p.add_argument(
        "--bandwidth",
        type=_positive_float,
        default=None,
        help="base kernel bandwidth (default: median heuristic on source and target pooled)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--record-every", type=_int_at_least(1), default=None, help=record_help)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier mmdflow run in DIR (only the files mmdflow wrote there)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar (it is also off when not a TTY)"
    )


def build_parser() -> argparse.ArgumentParser:
    """Builds the ``mmdflow`` argument parser (subcommands ``flow`` and ``color-transfer``)."""
    from mmdflow import __version__

    parser = _Parser(
        prog="mmdflow",
        description="Kernel-discrepancy (MMD / Sobolev) gradient flows of particles.",
        epilog="Run `mmdflow COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"mmdflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    f = sub.add_parser(
        "flow",
        help="flow particles from a source to a target point cloud",
        description=(
            "Flow particles from SOURCE towards TARGET and write DIR/particles.npy, "
            "DIR/trajectory.npz, DIR/metrics.json, DIR/flow.png and DIR/mmd.png. SOURCE and "
            "TARGET are 2-D toy shapes (gaussian, moons, rings, spiral, checkerboard, "
            "8gaussians, swissroll, heart, letter, mask:<text>), 'digits', or .npy files "
            "holding an [N, d] array. Density flows (--method svgd|ksd, and srmmd given "
            "--density) move the particles toward --density instead and write DIR/ksd.png in "
            "place of DIR/mmd.png."
        ),
    )
    f.add_argument(
        "--method",
        choices=tuple(FLOWS),
        default="sobolev",
        help="the flow, a name of mmdflow.flows.FLOWS: kernel Sobolev descent, MMD "
        "gradient flow (Arbel et al.), neural Sobolev descent, ... (default sobolev)",
    )
    f.add_argument("--source", default="gaussian", help="initial particles (default gaussian)")
    f.add_argument(
        "--target",
        default=None,
        help="target samples of a sample flow (default 8gaussians; not with --density)",
    )
    density = f.add_argument(
        "--density",
        default=None,
        metavar="NAME",
        help="target log-density of a density flow (--method %(density_flows)s; "
        "required by those that take no samples): a built-in "
        f"({', '.join(sorted(DENSITIES))}; with exact samples, the reference of the final "
        "MMD^2) or MODULE:FUNCTION, a JAX-traceable log p of a [d] point (up to a constant); "
        "default bandwidth: Liu & Wang's median rule, median distance / sqrt(2 log(n + 1)) of "
        "the exact samples (else of the source)",
    )
    # formatted when the help is shown: reading each flow's targets imports its module, and
    # the neural one imports Flax (about 1.5 s of every command otherwise)
    density.density_flows = _Deferred(lambda: "|".join(_density_methods()))
    f.add_argument(
        "--dim",
        type=_int_at_least(1),
        default=None,
        metavar="D",
        help="dimension of --density where it does not fix one (banana, funnel, "
        "MODULE:FUNCTION; default: the source's); --source gaussian is then N(0, I_D)",
    )
    f.add_argument(
        "--n",
        type=_int_at_least(2),
        default=1000,
        help="number of particles and of target samples; files with more rows are "
        "subsampled (default 1000)",
    )
    f.add_argument(
        "--step-size",
        type=_positive_float,
        default=None,
        help="step size (default: the method's own for the data's bandwidth, "
        "mmdflow.fields.<Field>.defaults_for; recorded in metrics.json)",
    )
    f.add_argument(
        "--reg",
        type=_positive_float,
        default=None,
        help="Sobolev ridge regularization in units of 1/bandwidth^2, so that it does not "
        "depend on the scale of the data: the solver gets reg / bandwidth^2 (methods with "
        f"a ridge; default sobolev {REG})",
    )
    f.add_argument(
        "--num-features",
        type=_num_features,
        default="auto",
        help="sobolev critic: 'exact' kernel, a number of random Fourier features, or "
        f"'auto' = exact when n*d <= {EXACT_MAX_SIZE}, else {DEFAULT_NUM_FEATURES} "
        "features (default auto)",
    )
    f.add_argument(
        "--fixed-features",
        action="store_true",
        help="sobolev with random features: draw them once (Mroueh et al.) instead of "
        "redrawing them at every step (the default, which matches the kernel far better)",
    )
    f.add_argument(
        "--devices",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="shard the particles and targets over the first N devices (a 1-D mesh; "
        "every --method; default: no sharding, one device)",
    )
    f.add_argument(
        "--impl",
        choices=("auto", "dense", "blocked", "pallas"),
        default="auto",
        help="kernel sums of the mmd flow and of the recorded MMD^2 (see mmdflow.ops): "
        "'pallas' runs the fused GPU kernels (Pallas interpret mode off a GPU: exact but "
        "slow); default auto (blocked)",
    )
    f.add_argument(
        "--noise",
        type=_nonneg_float,
        default=0.0,
        help="noise injection (Arbel et al.): the velocity is evaluated at the particles "
        "plus this times the bandwidth times N(0, I) noise (default 0)",
    )
    f.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other hyperparameter of the method's velocity field (mmdflow.fields), as a "
        "Python literal, e.g. --method drmmd --param adaptive=True --param cg_tol=1e-8 "
        "(repeatable)",
    )
    add_resume_options(f)
    _add_common(
        f,
        steps=500,
        kernel="mixture",
        kernel_note="resolves fine structure that the median bandwidth alone blurs; density "
        "flows: gaussian, the kernel their default steps were measured with",
        record_help="steps between records/snapshots (default steps/50)",
    )
    f.set_defaults(func=_cmd_flow, kernel=None)  # resolved per --method (cli._flow)

    c = sub.add_parser(
        "color-transfer",
        help="recolor an image with the color distribution of another",
        description=(
            "Recolor SOURCE with TARGET's colors: Sobolev descent of a subsample of SOURCE's "
            "pixel colors (points in [0, 1]^3) towards TARGET's, then every pixel is moved "
            "with the same sequence of critic gradients. Images: astronaut, coffee, chelsea, "
            "rocket, grace_hopper, or a .png/.jpg file. Writes DIR/recolored.png, "
            "DIR/comparison.png and DIR/metrics.json."
        ),
    )
    c.add_argument("--source", default="astronaut", help="image to recolor (default astronaut)")
    c.add_argument("--target", default="coffee", help="image giving the colors (default coffee)")
    c.add_argument(
        "--n-colors",
        type=_int_at_least(2),
        default=2000,
        help="pixels subsampled from each image to fit the flow (default 2000)",
    )
    c.add_argument(
        "--max-size",
        type=_int_at_least(0),
        default=256,
        help="downscale images so that their longest side is at most this many pixels; "
        "0 keeps the full size (default 256)",
    )
    c.add_argument(
        "--step-size",
        type=_positive_float,
        default=STEP_SIZE,
        help=f"step size (default {STEP_SIZE})",
    )
    c.add_argument(
        "--reg",
        type=_positive_float,
        default=COLOR_REG,
        help="Sobolev ridge regularization in units of 1/bandwidth^2 (the solver gets "
        f"reg / bandwidth^2; default {COLOR_REG})",
    )
    c.add_argument(
        "--num-features",
        type=_num_features,
        default="auto",
        help=f"'exact', a number of random Fourier features, or 'auto' (exact when "
        f"n-colors*3 <= {EXACT_MAX_SIZE}, else {DEFAULT_NUM_FEATURES}; default auto)",
    )
    c.add_argument(
        "--fixed-features",
        action="store_true",
        help="draw the random features once instead of at every step",
    )
    _add_common(
        c,
        steps=100,
        kernel="gaussian",
        kernel_note="a smooth color map; the mixture's narrow bandwidths posterize",
        record_help="steps between records (default steps/50)",
    )
    c.set_defaults(func=_cmd_color_transfer)
    add_train_parser(sub)
    return parser
