"""Is the tail really a power law? The `powerlaw` package's likelihood-ratio tests of the tail fit
against a truncated power law, a lognormal and an exponential, over the same xmin, with a verdict
in plain words (Clauset, Shalizi & Newman 2009; the test WeightWatcher users run by hand).

powerlaw 2.x clamps alpha to [0, 3] unless given a wider range (method.md section 3): a layer
of alpha 5 would read 3.0. The range is opened here, so the package's alpha equals our Hill
estimate on the same tail. R > 0 favours the power law, R < 0 the alternative; p is the
significance of R's sign (normalised ratio), and a sign with p >= 0.1 says nothing.

    test = compare_tails(analysis.eigenvalues[name], layer.xmin_peak)
    test.alpha, test.comparisons["lognormal"].R, test.verdict   # "a lognormal fits as well"
    cached_tails(analysis, name, "peak")                         # the same, cached on disk
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

ALTERNATIVES = ("truncated_power_law", "lognormal", "exponential")
NESTED = {"truncated_power_law"}  # the power law is its special case: R <= 0 always, p tests the cutoff
WORDS = {"truncated_power_law": "a truncated power law", "lognormal": "a lognormal", "exponential": "an exponential"}
ALPHA_RANGE = (1.0, 100.0)  # powerlaw's own default stops at 3
SIGNIFICANT = 0.1


@dataclass(frozen=True)
class Comparison:
    alternative: str
    R: float  # log-likelihood ratio, normalised: > 0 favours the power law
    p: float

    @property
    def rejects(self) -> bool:
        """The alternative fits significantly better than the power law."""
        return self.R < 0 and self.p < SIGNIFICANT

    @property
    def ties(self) -> bool:
        """The test cannot tell the two apart (for a nested alternative: never; a cutoff that
        is not significant leaves the power law standing)."""
        return self.alternative not in NESTED and not self.rejects and not (self.R > 0 and self.p < SIGNIFICANT)

    @property
    def words(self) -> str:
        other = WORDS[self.alternative]
        if self.alternative in NESTED:
            if self.rejects:
                return f"{other} fits better: the tail bends down (R {self.R:+.2f}, p {self.p:.2g})"
            return f"no significant cutoff: {other} fits no better (R {self.R:+.2f}, p {self.p:.2f})"
        if not np.isfinite(self.R) or self.p >= SIGNIFICANT:
            return f"{other} fits as well (R {self.R:+.2f}, p {self.p:.2f})"
        better = "the power law fits better than" if self.R > 0 else "fits better:"
        if self.R > 0:
            return f"{better} {other} (R {self.R:+.2f}, p {self.p:.2g})"
        return f"{other} {better} (R {self.R:+.2f}, p {self.p:.2g})"


@dataclass(frozen=True)
class TailTest:
    alpha: float
    xmin: float
    n_tail: int
    comparisons: dict[str, Comparison]

    @property
    def verdict(self) -> str:
        """One line: which distribution the tail follows, as far as the tests can tell."""
        worse = [c for c in self.comparisons.values() if c.rejects]
        if worse:
            best = min(worse, key=lambda c: c.R)
            return f"not a power law: {WORDS[best.alternative]} fits better (R {best.R:+.2f}, p {best.p:.2g})"
        ties = [c for c in self.comparisons.values() if c.ties]
        if not ties:
            return "a power law: it fits better than every alternative tested"
        names = " or ".join(WORDS[c.alternative] for c in ties)
        return f"undecided: {names} fits as well as the power law"

    def to_dict(self) -> dict:
        own = {n: {"R": c.R, "p": c.p} for n, c in self.comparisons.items()}
        return {"alpha": self.alpha, "xmin": self.xmin, "n_tail": self.n_tail, "comparisons": own,
                "verdict": self.verdict}  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict) -> TailTest:
        comparisons = {n: Comparison(n, v["R"], v["p"]) for n, v in doc["comparisons"].items()}
        return cls(doc["alpha"], doc["xmin"], doc["n_tail"], comparisons)


def compare_tails(evals: np.ndarray, xmin: float) -> TailTest:
    """The tests over the tail evals >= xmin (seconds per matrix: the lognormal's numerical fit)."""
    import powerlaw

    evals = np.asarray(evals, dtype=np.float64)
    tail = evals[evals >= xmin]
    with warnings.catch_warnings():  # the package warns about its own numerical fits; the R and p say it
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(evals, xmin=xmin, verbose=0, parameter_ranges={"alpha": ALPHA_RANGE})
        comparisons = {}
        for alt in ALTERNATIVES:
            R, p = fit.distribution_compare("power_law", alt, normalized_ratio=True)
            comparisons[alt] = Comparison(alt, float(R), float(p))
    return TailTest(float(fit.power_law.alpha), float(xmin), int(len(tail)), comparisons)


def cached_tails(analysis, name: str, rule: str = "peak") -> TailTest:
    """compare_tails of one analysed matrix at its `rule`'s xmin, cached on disk by the
    eigenvalues themselves (a digest), the xmin, the alpha range and powerlaw's version."""
    import hashlib

    import powerlaw

    from alphaprune.pipeline import _json_cache

    evals = np.ascontiguousarray(analysis.eigenvalues[name], dtype=np.float64)
    xmin = getattr(analysis.layer(name), f"xmin_{rule}")
    digest = hashlib.sha1(evals.tobytes()).hexdigest()[:20]
    version = getattr(powerlaw, "__version__", "?")
    key = f"{digest}|{xmin!r}|{ALPHA_RANGE}|powerlaw {version}"
    doc = _json_cache("tails.json", key, lambda: compare_tails(evals, xmin).to_dict())
    return TailTest.from_dict(doc)
