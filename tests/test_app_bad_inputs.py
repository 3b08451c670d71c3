"""The app's part of the bad-input catalogue (docs/reliability.md, "App"), with AppTest on a
tiny model: every case ends in one st.error of one line that says what is wrong and what
to do, no exception element, and nothing already loaded, measured or stored is changed.

Cases: model specs (unknown name, missing / garbage / empty / truncated .gguf, a folder
without config.json or without weights, a file that is no model, a non-causal model),
uploads (over the size limit, a non-model file, a zip that is no zip, a zip with '..', an
absolute path or a symbolic link, a zip without config.json, a zip bomb), and texts on
the Prune page (empty, binary, too short, a missing path, an upload over the limit, a
sequence length over the model's context).

    .venv/bin/python -m pytest tests/test_app_bad_inputs.py -q
"""

from __future__ import annotations

import io
import re
import stat
import zipfile

import pytest
from streamlit import config as st_config

from alphaprune.paths import cache_dir
from alphaprune.ui import session
from tests.conftest import tiny_llama
from tests.test_app_model_prune import (
    UPLOAD_SOURCE,
    app,
    clear_streamlit_caches,  # noqa: F401 (an autouse fixture, used here too)
    load,
    no_errors,
    prune,
    prune_page,
    runs_stored,
    tiny_folder,  # noqa: F401 (a fixture)
)


@pytest.fixture
def upload_limit_mb():
    """The server's upload limit set to 1 MB for one test (restored after)."""
    before = st_config.get_option("server.maxUploadSize")
    st_config.set_option("server.maxUploadSize", 1)
    yield 1
    st_config.set_option("server.maxUploadSize", before)


def state(at) -> tuple:
    """What must not change: the loaded model, its analysis, the result, the stored runs."""
    keys = (session.MODEL, session.ANALYSIS, session.RESULT, session.RUN_ID)
    return (*(at.session_state[k] for k in keys), runs_stored())


def one_line_error(at, *fragments: str) -> str:
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert "\n" not in message and "Traceback" not in message
    assert str(cache_dir()) not in message  # uploads are named as uploaded, not by their cache path
    for fragment in fragments:
        assert fragment in message, message
    print(f"app message: {message}")  # shown with -s: the catalogue's rows
    return message


def zipped(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


@pytest.fixture
def loaded(tiny_folder):  # noqa: F811
    """An app with the tiny model loaded and analysed."""
    at = load(app(), str(tiny_folder))
    no_errors(at)
    return at


def _model_spec_cases(tmp):
    (tmp / "garbage.gguf").write_text("not a model at all\n" * 50)
    (tmp / "empty.gguf").write_bytes(b"")
    (tmp / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 8)
    (tmp / "no-config").mkdir()
    (tmp / "no-config" / "model.safetensors").write_bytes(b"x")
    tiny_llama(layers=1).config.save_pretrained(tmp / "no-weights")
    (tmp / "notes.txt").write_text("hello")
    (tmp / "bert").mkdir()
    (tmp / "bert" / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (tmp / "bert" / "model.safetensors").write_bytes(b"x")  # weights present: the config decides
    return {
        "unknown name": ("no-such-model", ["unknown model 'no-such-model'", "use smollm2-135m"]),
        "missing .gguf": (str(tmp / "missing.gguf"), ["no such GGUF file"]),
        "garbage .gguf": (str(tmp / "garbage.gguf"), ["is not a GGUF file", "give a .gguf model file"]),
        "empty .gguf": (str(tmp / "empty.gguf"), ["is empty, not a GGUF model"]),
        "truncated .gguf": (str(tmp / "truncated.gguf"), ["damaged or truncated", "get it again"]),
        "folder without config.json": (str(tmp / "no-config"), ["folder without config.json", "save_pretrained"]),
        "folder without weights": (str(tmp / "no-weights"), ["has no weights", "save_pretrained"]),
        "a file that is no model": (str(tmp / "notes.txt"), ["is not a model", "give a .gguf file"]),
        "not a causal LM": (str(tmp / "bert"), ["not a causal language model"]),
    }


MODEL_SPEC_CASES = (
    "unknown name",
    "missing .gguf",
    "garbage .gguf",
    "empty .gguf",
    "truncated .gguf",
    "folder without config.json",
    "folder without weights",
    "a file that is no model",
    "not a causal LM",
)


@pytest.mark.parametrize("case", MODEL_SPEC_CASES)
def test_bad_model_spec(loaded, tmp_path, case):
    spec, fragments = _model_spec_cases(tmp_path)[case]
    before = state(loaded)
    load(loaded, spec)
    one_line_error(loaded, *fragments)
    assert state(loaded) == before
    assert loaded.warning[0].value.startswith("Still loaded: ")


def _upload(at, name: str, data: bytes):
    at.radio(key="model_source").set_value(UPLOAD_SOURCE).run()
    at.file_uploader(key="model_upload").set_value((name, data, "application/octet-stream")).run()
    if not at.error:  # the upload itself was accepted: the load finds what is wrong
        at.button(key="load").click().run()
    return at


UPLOAD_CASES = {
    "a non-model file": ("notes.gguf", b"just some notes\n" * 20, ["notes.gguf is not a GGUF file"]),
    "a zip that is no zip": ("model.zip", b"PK but not really", ["model.zip is not a readable zip archive"]),
    "a zip with ../": (
        "escape.zip",
        zipped({"model/config.json": b"{}", "model/../../escaped.txt": b"x"}),
        ["escape.zip holds 'model/../../escaped.txt', a path outside its folder", "zip the model folder itself"],
    ),
    "a zip with an absolute path": (
        "absolute.zip",
        zipped({"/tmp/alphaprune-absolute.txt": b"x"}),
        ["a path outside its folder"],
    ),
    "a zip with a symbolic link": (
        "link.zip",
        zipped({"model/config.json": b"{}"}, links={"model/model.safetensors": "/etc/passwd"}),
        ["link.zip holds a symbolic link (model/model.safetensors)", "zip the files themselves"],
    ),
    "a zip without config.json": (
        "weights.zip",
        zipped({"model/model.safetensors": b"x"}),
        ["weights.zip holds no config.json", "save_pretrained"],
    ),
}


@pytest.mark.parametrize("case", list(UPLOAD_CASES))
def test_bad_model_upload(loaded, case):
    name, data, fragments = UPLOAD_CASES[case]
    before = state(loaded)
    one_line_error(_upload(loaded, name, data), *fragments)
    assert state(loaded) == before
    uploads = cache_dir() / "uploads" / "models"
    assert not list(uploads.rglob("escaped.txt")) and not (cache_dir() / "escaped.txt").exists()
    assert not any(p.is_symlink() for p in uploads.rglob("*"))


def test_oversized_model_upload(loaded, upload_limit_mb):
    before = state(loaded)
    at = _upload(loaded, "big.gguf", b"GGUF" + bytes(2 * 2**20))
    one_line_error(at, "big.gguf is 2 MB, over the upload limit of 1 MB", "give its path under **Hub id")
    assert state(at) == before
    assert "Up to 1 MB" in "\n".join(c.value for c in at.caption)
    assert not list(cache_dir().rglob("big.gguf"))  # refused before it is written


def test_zip_bomb_upload(loaded, upload_limit_mb):
    before = state(loaded)
    bomb = zipped({"model/config.json": b"{}", "model/zeros.bin": bytes(5 * 2**20)})  # 5 MB in ~5 kB
    assert len(bomb) < 2**20
    one_line_error(_upload(loaded, "bomb.zip", bomb), "bomb.zip unpacks to 5 MB, more than 4 x the upload limit")
    assert state(loaded) == before


@pytest.fixture
def pruned(loaded):
    """The tiny model with one stored prune result (magnitude, small)."""
    prune(prune_page(loaded, prune_pruner="magnitude"))
    no_errors(loaded)
    return loaded


TEXT_CASES = {
    "empty": ("empty.txt", b"", ["text source empty.txt is empty", "give a file with some text"]),
    "binary": ("blob.txt", bytes(range(256)) * 4, ["blob.txt is not UTF-8 text", "convert it to UTF-8"]),
    "too short": ("short.txt", b"only a few words", ["has 16 tokens, too short for a window of 32"]),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_bad_text_upload(pruned, case):
    name, data, fragments = TEXT_CASES[case]
    before = state(pruned)
    pruned.selectbox(key="prune_eval").set_value("upload a text file").run()
    pruned.file_uploader(key="prune_eval_file").set_value((name, data, "text/plain")).run()
    prune(pruned)
    one_line_error(pruned, *fragments)
    assert state(pruned) == before
    assert pruned.warning[0].value.startswith("The result below is from the previous run")


def test_missing_text_path(pruned, tmp_path):
    before = state(pruned)
    pruned.selectbox(key="prune_calib").set_value("a text file path").run()
    pruned.text_input(key="prune_calib_path").set_value(str(tmp_path / "nowhere.txt")).run()
    pruned.selectbox(key="prune_pruner").set_value("wanda").run()  # reads the calibration text
    prune(pruned)
    one_line_error(pruned, "nowhere.txt is neither python-docs nor wikitext2 nor an existing file")
    assert state(pruned) == before


def test_oversized_text_upload(pruned, upload_limit_mb):
    before = state(pruned)
    pruned.selectbox(key="prune_eval").set_value("upload a text file").run()
    pruned.file_uploader(key="prune_eval_file").set_value(("big.txt", b"a" * (2 * 2**20), "text/plain")).run()
    one_line_error(pruned, "big.txt is 2 MB, over the upload limit of 1 MB", "give its path under **a text file path**")
    assert state(pruned) == before
    assert not list(cache_dir().rglob("big.txt"))


def test_sequence_length_over_the_context(pruned):
    before = state(pruned)
    pruned.number_input(key="prune_seqlen").set_value(512).run()  # the tiny model's context is 256
    prune(pruned)
    one_line_error(pruned, "seqlen 512 exceeds the model's context of 256 tokens")
    assert state(pruned) == before


def test_the_doc_lists_every_app_case():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    listed = set(re.findall(r"^\| `(test_[^`]+)` \|", doc[doc.index("## App") :], flags=re.M))
    cases = [f"test_bad_model_spec[{c}]" for c in MODEL_SPEC_CASES]
    cases += [f"test_bad_model_upload[{c}]" for c in UPLOAD_CASES] + [f"test_bad_text_upload[{c}]" for c in TEXT_CASES]
    parametrized = {"test_bad_model_spec", "test_bad_model_upload", "test_bad_text_upload"}
    cases += [name for name in globals() if name.startswith("test_") and name not in parametrized]
    cases.remove("test_the_doc_lists_every_app_case")
    assert set(cases) <= listed, sorted(set(cases) - listed)
