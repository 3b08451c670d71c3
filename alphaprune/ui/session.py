"""Session state and cached resources of the app, in one place.

Keys pages may read: MODEL (LoadedModel), ANALYSIS (Analysis), MODEL_SPEC (str).
The dense model is a cached resource shared by all sessions and must never be modified
in place (pruning works on a copy).
"""

from __future__ import annotations

import streamlit as st

from alphaprune.analysis import Analysis, Progress, analyze
from alphaprune.models import DEFAULT_MODEL, LoadedModel, load_model

MODEL_SPEC = "model_spec"
MODEL = "loaded_model"
ANALYSIS = "analysis"


def init_state() -> None:
    st.session_state.setdefault(MODEL_SPEC, DEFAULT_MODEL)
    st.session_state.setdefault(MODEL, None)
    st.session_state.setdefault(ANALYSIS, None)


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_model(spec: str, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    return load_model(spec, dtype=dtype, device=device)


def run_analysis(loaded: LoadedModel, progress: Progress) -> Analysis:
    """Uncached at the Streamlit level (the library has its own disk cache), so the
    progress callback is safe (see streamlit-notes 2.6)."""
    return analyze(loaded.model, loaded.name, device=loaded.device, progress=progress)
