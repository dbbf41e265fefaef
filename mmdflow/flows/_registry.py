"""The registry of flows: name -> velocity field, and :func:`make`."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from mmdflow.flows._particle import ParticleFlow


class _Registry(Mapping):
    """Name -> velocity-field class, each imported on first use (``"module:Class"``)."""

    def __init__(self, entries: dict[str, str]):
        self._entries = entries

    def __getitem__(self, name: str) -> type:
        module, cls = self._entries[name].split(":")
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"FLOWS({self._entries})"


#: Every flow by name: its velocity field class (:mod:`mmdflow.fields`). The command line
#: (``mmdflow flow --method``), the benchmarks and the contract test read it; a new flow
#: is a new field module plus one line here.
FLOWS: Mapping[str, type] = _Registry(
    {
        "sobolev": "mmdflow.fields._sobolev:SobolevField",
        "mmd": "mmdflow.fields._mmd:MMDField",
        "neural-sobolev": "mmdflow.fields._neural:NeuralSobolevField",
        "drmmd": "mmdflow.fields._drmmd:DrMMDField",
        "svgd": "mmdflow.fields._svgd:SVGDField",
        "ksd": "mmdflow.fields._ksd:KSDField",
        "kale": "mmdflow.fields._kale:KALEField",
        "srmmd": "mmdflow.fields._srmmd:SrMMDField",
    }
)

#: :class:`ParticleFlow`'s own hyperparameters (the rest of :func:`make`'s go to the field)
FLOW_PARAMS = tuple(f.name for f in dataclasses.fields(ParticleFlow) if f.name != "field")


def field_params(name: str) -> tuple[str, ...]:
    """The hyperparameters of flow ``name``'s field (its dataclass fields)."""
    return tuple(f.name for f in dataclasses.fields(_field_class(name)))


def targets(name: str) -> tuple[str, ...]:
    """What flow ``name`` moves particles toward: ``("samples",)``, ``("density",)`` or both.

    A field's class attribute ``targets`` (both: ``"srmmd"``, whose instances move toward
    a density when given ``logp``), else its ``target`` (``"density"``: ``"svgd"``,
    ``"ksd"``), else samples.

    Example:
      >>> from mmdflow import flows
      >>> flows.targets("mmd"), flows.targets("svgd"), flows.targets("srmmd")
      (('samples',), ('density',), ('samples', 'density'))
    """
    cls = _field_class(name)
    return tuple(getattr(cls, "targets", None) or (getattr(cls, "target", "samples"),))


def _field_class(name: str) -> type:
    if name not in FLOWS:
        raise ValueError(f"unknown flow {name!r}; valid: {sorted(FLOWS)}.")
    return FLOWS[name]


def make(name: str, kernel: Any = None, **hyper: Any) -> ParticleFlow:
    """The flow ``name`` of :data:`FLOWS` with the given hyperparameters.

    Args:
      name: a key of :data:`FLOWS` (``"sobolev"``, ``"mmd"``, ``"neural-sobolev"``).
      kernel: the field's kernel (``None``: the field's default, where it has one).
      **hyper: :class:`ParticleFlow`'s (``step_size``, ``noise_level``, ``max_move``)
        and the field's hyperparameters (see its class in :mod:`mmdflow.fields`).

    Returns:
      A :class:`ParticleFlow`.

    Raises:
      ValueError: unknown ``name`` or hyperparameter, or a bad value.

    Example:
      >>> from mmdflow import flows, kernels
      >>> f = flows.make("sobolev", kernels.Gaussian(1.0), step_size=0.5, reg=0.1)
      >>> f.field.reg, f.step_size
      (0.1, 0.5)
    """
    cls = _field_class(name)
    names = field_params(name)
    unknown = sorted(set(hyper) - set(names) - set(FLOW_PARAMS))
    if unknown:
        raise ValueError(
            f"flow {name!r}: unknown hyperparameter(s) {unknown}; valid: "
            f"{sorted(set(names) | set(FLOW_PARAMS))}."
        )
    if kernel is not None:
        hyper["kernel"] = kernel
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in hyper
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"flow {name!r}: missing hyperparameter(s) {missing}.")
    flow_kw = {k: hyper.pop(k) for k in FLOW_PARAMS if k in hyper}
    return ParticleFlow(cls(**hyper), **flow_kw)
