"""One weight matrix's measured quantities (LayerMetrics) and the names of the numeric ones.

Kept apart from analysis.py (which needs torch) so that checking a setting such as
`--metric` stays torch-free and fast (config.py validates before any model is loaded).

    from alphaprune.layer_metrics import METRIC_NAMES   # ("alpha_peak", "xmin_peak", ...)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerMetrics:
    """Everything measured on one weight matrix (shape is (out, in))."""

    name: str
    block: int
    kind: str
    shape: tuple[int, int]
    params: int
    prunable: bool
    alpha_peak: float
    xmin_peak: float
    D_peak: float
    n_tail_peak: int
    alpha_peak_fixed: float
    xmin_peak_fixed: float
    D_peak_fixed: float
    n_tail_peak_fixed: int
    alpha_mid: float
    xmin_mid: float
    D_mid: float
    n_tail_mid: int
    alpha_ks: float
    xmin_ks: float
    D_ks: float
    n_tail_ks: int
    spectral_norm: float
    log_spectral_norm: float
    norm: float
    log_norm: float
    stable_rank: float
    alpha_hat: float
    entropy: float
    rank: float
    mp_sigma2: float
    mp_edge_low: float
    mp_edge_high: float
    mp_num_spikes: int
    mp_softrank: float
    alpha_farms: float = float("nan")  # FARMS alpha (alphaprune/farms.py); NaN when not computed

    def __eq__(self, other) -> bool:
        """Field by field, NaN equal to NaN: a NaN read back from the cache's JSON or from a
        worker's pickle is another float object, and tuple equality holds NaN == NaN only for
        the same object."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> LayerMetrics:
        return cls(**{**data, "shape": tuple(data["shape"])})


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


# Numeric per-matrix quantities a user can plot or allocate by (identity fields excluded).
METRIC_NAMES = tuple(
    f.name
    for f in dataclasses.fields(LayerMetrics)
    if f.type in ("float", "int") and f.name not in ("block", "params") and not f.name.startswith("n_tail")
)
