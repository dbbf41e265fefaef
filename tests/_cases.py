"""Kernel cases shared by the tests: (name, mmdflow kernel, reference params)."""

from mmdflow import kernels


def kernel_cases(d):
    return [
        ("gaussian", kernels.Gaussian(0.9), {"bw": 0.9}),
        (
            "mixture",
            kernels.MixtureRBF((0.5, 1.0, 2.0), weights=(0.2, 0.3, 0.5)),
            {"bws": (0.5, 1.0, 2.0), "ws": (0.2, 0.3, 0.5)},
        ),
        ("imq", kernels.IMQ(1.2, beta=-0.7), {"c": 1.2, "beta": -0.7}),
        ("laplace", kernels.Laplace(1.1), {"bw": 1.1}),
        ("rq", kernels.RationalQuadratic(0.8, alpha=2.0), {"bw": 0.8, "alpha": 2.0}),
        ("energy", kernels.Energy(), {}),
        ("poly", kernels.Polynomial(3), {"deg": 3, "gamma": 1.0 / d, "c": 1.0}),
        ("linear", kernels.Linear(), {}),
        ("sum_gl", kernels.Gaussian(0.7) + kernels.Laplace(1.3), {}),
        ("scaled_imq", 2.5 * kernels.IMQ(1.5), {}),
    ]


NAMES = [c[0] for c in kernel_cases(2)]


def case(name, d):
    for c in kernel_cases(d):
        if c[0] == name:
            return c[1], c[2]
    raise KeyError(name)
