"""The sparsity patterns pruners accept, without importing torch.

Settings are checked before torch loads (about 3 s), so that a typo on the command line is
answered at once (alphaprune/config.py); alphaprune/pruners.py holds the pruners themselves.

    parse_pattern("2:4")            # (2, 4): remove 2 of every 4 consecutive inputs of a row
    parse_pattern("unstructured")   # None
    check_pattern((2, 4), 30, "layers.0.q_proj")   # UserError: 4 does not divide 30
"""

from __future__ import annotations

from alphaprune.errors import UserError

PATTERNS = ("unstructured", "2:4", "4:8")
BLOCKSIZE = 128  # SparseGPT's columns per block (the reference's default)
NM = tuple[int, int]


def parse_pattern(pattern: str) -> NM | None:
    """'unstructured' -> None; 'N:M' -> (N, M) with 0 < N < M."""
    if pattern == "unstructured":
        return None
    try:
        n, m = (int(x) for x in pattern.split(":"))
    except ValueError:
        raise UserError(f"pattern must be 'unstructured' or N:M such as 2:4, got {pattern!r}") from None
    if not 0 < n < m:
        raise UserError(f"in an N:M pattern 0 < N < M must hold, got {pattern!r}")
    if BLOCKSIZE % m:  # SparseGPT picks N:M groups inside its column blocks
        raise UserError(f"in an N:M pattern M must divide {BLOCKSIZE} (e.g. 2:4, 4:8), got {pattern!r}")
    return n, m


def check_pattern(nm: NM | None, columns: int, name: str = "a matrix") -> None:
    if nm is not None and columns % nm[1]:
        raise UserError(f"N:M pattern {nm[0]}:{nm[1]} does not divide the rows of {name} ({columns} inputs)")
