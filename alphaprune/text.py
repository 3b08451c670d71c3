"""Text sources for calibration and evaluation, and how they are cut into token windows.

The one place that knows how a text source is read (method.md sections 5-6):

- `python-docs`: CPython's own documentation topics (`pydoc_data.topics`), always present
  offline; the default for calibration and evaluation.
- `wikitext2`: WikiText-2 (raw) test split through the `datasets` package (needs the
  network), documents joined by "\\n\\n" as in the Wanda / SparseGPT evaluation code.
- a path to a UTF-8 text file (CRLF and CR line ends are normalised to LF).

A text is tokenised once, whole, with the tokenizer's default special tokens, as the
Wanda / SparseGPT data code does (`tokenizer("\\n\\n".join(docs), return_tensors="pt")`): a
tokenizer that adds a BOS puts one at the very start of the text, not one per window. The
same ids serve calibration (as the reference's wikitext2 loader, which draws its windows
from the once-tokenised train text; our sources are one text, never a set of documents to
tokenise one by one as its C4 loader does) and evaluation, so that the same text gives the
same ids either way. Calibration takes N random windows (`random.seed(seed)`, start =
randint(0, len - seqlen - 1), as the reference code); evaluation takes the first W
non-overlapping windows (all by default). `protocol(tokenizer)` says what was added, for
the run record.

    ids = token_ids("python-docs", tokenizer)             # 1-D LongTensor
    calib = calibration_windows(ids, n=32, seqlen=1024, seed=0)   # (32, 1024)
    test = evaluation_windows(ids, seqlen=1024, windows=32)       # (32, 1024)
    protocol(tokenizer).as_dict()   # {"special_tokens": True, "bos": 1, "eos": None, "joined": "\\n\\n"}
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from alphaprune.errors import UserError, setting

if TYPE_CHECKING:  # imported where tensors are made: checking a source or the hub stays light
    import torch

SOURCES = ("python-docs", "wikitext2")  # named sources; anything else is a file path
JOIN = "\n\n"  # the named sources join their documents with this, as the reference's evaluation code


@dataclass(frozen=True)
class Text:
    """A text source read into one string, with a short digest for cache keys and records."""

    source: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.text.encode("utf-8")).hexdigest()[:16]


def _python_docs() -> str:
    from pydoc_data.topics import topics  # stdlib: a dict topic -> help text

    return JOIN.join(topics[key] for key in sorted(topics))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False only when the Hugging Face hub surely cannot be reached (offline, `datasets` would
    retry for ~25 s); True when unsure (a proxy, an odd HF_ENDPOINT): then `datasets` decides."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    try:
        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        host, port = url.hostname, url.port or (80 if url.scheme == "http" else 443)
    except ValueError:
        return True
    if not host:
        return True
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _datasets():
    """(datasets module, offline flag), or UserError when `datasets` is missing."""
    try:
        import datasets
        from huggingface_hub import constants
    except ImportError:
        raise UserError(
            "wikitext2 needs the `datasets` package and the network; "
            "pass a local copy as a text file instead (e.g. wikitext2_test.raw)"
        ) from None
    return datasets, bool(datasets.config.HF_DATASETS_OFFLINE or constants.HF_HUB_OFFLINE)


def _check_wikitext2() -> None:
    """UserError now (a few seconds) when wikitext2 surely cannot be downloaded."""
    offline = _datasets()[1]  # offline: the local cache is read, nothing to probe
    if not offline and not _hub_reachable():
        raise UserError(
            "cannot reach the Hugging Face hub for wikitext2; pass a local copy as a text file (wikitext2_test.raw) "
            "(a copy `datasets` cached earlier loads with HF_DATASETS_OFFLINE=1)"
        )


def _wikitext2() -> str:
    datasets = _datasets()[0]
    _check_wikitext2()
    try:
        data = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as exc:  # no cached copy offline, a broken download, ...
        raise UserError(
            f"cannot load wikitext2 ({type(exc).__name__}); pass a local copy as a text file (wikitext2_test.raw)"
        ) from None
    return JOIN.join(data["text"])


def _read_file(path: Path) -> str:
    """A UTF-8 text file's text, LF line ends; UserError for a missing, binary or non-UTF-8 file."""
    if not path.is_file():
        raise _no_such_source(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): check its permissions") from None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    if "\0" in decoded:  # valid UTF-8, yet no text holds NUL bytes: an archive, weights, an image ...
        raise UserError(f"{path} is a binary file, not text: give a UTF-8 text file")
    return decoded.replace("\r\n", "\n").replace("\r", "\n")


def _no_such_source(source) -> UserError:
    return UserError(
        f"text source {source} is neither {' nor '.join(SOURCES)} nor an existing file: "
        "check the path, or name one of those sources"
    )


def check_source(source: str, read: bool = False) -> None:
    """UserError unless `source` names a text source. With `read`, also what can be known
    before a model is loaded: a file is read (empty? binary? UTF-8?), wikitext2's hub probed."""
    if source in SOURCES:
        if read and source == "wikitext2":
            _check_wikitext2()
        return
    path = Path(source).expanduser()
    if not read:
        if not path.is_file():
            raise _no_such_source(source)
        return
    _nonempty(source, _read_file(path))


def _nonempty(source: str, text: str) -> str:
    if not text.strip():
        raise UserError(f"text source {source} is empty; give a file with some text in it")
    return text


def read_text(source: str) -> Text:
    """The whole text of a source (see the module docstring); UserError if unusable."""
    if source == "python-docs":
        text = _python_docs()
    elif source == "wikitext2":
        text = _wikitext2()
    else:
        text = _read_file(Path(source).expanduser())
    return Text(source, _nonempty(source, text))


def tokenize(text: Text, tokenizer) -> torch.Tensor:
    """The token ids of the whole text, 1-D int64, with the tokenizer's default special
    tokens (a BOS at the very start where it adds one): the reference protocol."""
    import torch

    ids = tokenizer(text.text)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


@dataclass(frozen=True)
class Protocol:
    """How `tokenize` turns a text into ids, for the run record: the tokenizer's default
    special tokens, and which ones that puts at the very start (bos) and end (eos) of a text:
    an id, None when it adds none, or a tuple of ids when it adds several."""

    special_tokens: bool
    bos: int | tuple[int, ...] | None
    eos: int | tuple[int, ...] | None
    joined: str = JOIN

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def adds_tokens(self) -> bool:
        """False when the ids are those of the text alone (as before BOS-aware tokenization)."""
        return self.bos is not None or self.eos is not None


_PROBE = "Hello world"  # any plain text: the special tokens show as what surrounds its ids


def _added(ids: list[int]) -> int | tuple[int, ...] | None:
    return None if not ids else ids[0] if len(ids) == 1 else tuple(ids)


def protocol(tokenizer) -> Protocol:
    """What `tokenize` adds with this tokenizer: the ids around a probe text's own ids."""
    plain = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(_PROBE)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return Protocol(True, _added(full[:start]), _added(full[start + len(plain) :]))
    # the special tokens changed how the text itself splits (no tokenizer known here does):
    # record the first and last ids where they differ from the plain ones
    return Protocol(True, full[0] if full[:1] != plain[:1] else None, full[-1] if full[-1:] != plain[-1:] else None)


def token_ids(source: str, tokenizer) -> torch.Tensor:
    return tokenize(read_text(source), tokenizer)


def _check_length(ids: torch.Tensor, seqlen: int, need: int, what: str) -> None:
    if seqlen < 2:
        raise UserError(f"sequence length must be at least 2 tokens, got {seqlen}")
    if len(ids) < need:
        raise UserError(
            f"the {what} text has {len(ids)} tokens, too short for a window of {seqlen}; "
            f"use a longer text or a smaller {setting('seqlen')}"
        )


def calibration_windows(ids: torch.Tensor, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """(n, seqlen) random windows, drawn as the reference code draws them."""
    if n < 1:
        raise UserError(f"the number of calibration samples must be at least 1, got {n}")
    _check_length(ids, seqlen, seqlen + 1, "calibration")
    rng = random.Random(seed)  # same draws as random.seed(seed) + random.randint
    starts = [rng.randint(0, len(ids) - seqlen - 1) for _ in range(n)]
    import torch

    return torch.stack([ids[s : s + seqlen] for s in starts])


def evaluation_windows(ids: torch.Tensor, seqlen: int, windows: int | None = None) -> torch.Tensor:
    """(W, seqlen) consecutive non-overlapping windows from the start; W = all by default."""
    _check_length(ids, seqlen, seqlen, "evaluation")
    available = len(ids) // seqlen
    count = available if windows is None else min(windows, available)
    if count < 1:
        raise UserError(f"the number of evaluation windows must be at least 1, got {windows}")
    return ids[: count * seqlen].reshape(count, seqlen)


HELDOUT_FRACTION = 0.1


def split_heldout(ids: torch.Tensor, fraction: float = HELDOUT_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration part, held-out tail): for tuning on calibration text only."""
    cut = int(len(ids) * (1.0 - fraction))
    return ids[:cut], ids[cut:]


def heldout_windows(ids: torch.Tensor, seqlen: int, windows: int) -> torch.Tensor:
    """(W, seqlen) windows of the held-out tail of calibration ids, or a UserError saying why not."""
    tail = split_heldout(ids)[1]
    if len(tail) < seqlen:
        raise UserError(
            f"an auto search scores its candidates on the last {HELDOUT_FRACTION:.0%} of the calibration "
            f"text ({len(tail)} tokens), too short for a window of {seqlen}; "
            f"use a longer {setting('calib')} text or a smaller {setting('seqlen')}"
        )
    return evaluation_windows(tail, seqlen, windows)
