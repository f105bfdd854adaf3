"""PDS: data weights from Pontryagin's maximum principle (the PMP solver).

:func:`solve` runs a T-step SGD trajectory from the model given (θ_0), the costates λ_t backwards
with Hessian-vector products, and returns ``grad_gamma`` ``(N,)`` float64, one score per proxy
example (higher = better), with a plain-JSON report. Parts: :mod:`.config` (configuration, plan),
:mod:`.passes` (trajectory forward, costates backward), :mod:`.solver`.

See docs/methods/pds.md for the variants, the equations, the storage layout and the checks.
"""

from winnow.methods.pds.config import (
    TRAJECTORY_BATCHES,
    VARIANTS,
    PMPConfig,
    _Data,
    gamma_entropy,
    project_simplex,
)
from winnow.methods.pds.passes import _contributions, _CudaJVP
from winnow.methods.pds.solver import solve

__all__ = [
    "TRAJECTORY_BATCHES",
    "VARIANTS",
    "PMPConfig",
    "_CudaJVP",
    "_Data",
    "_contributions",
    "gamma_entropy",
    "project_simplex",
    "solve",
]
