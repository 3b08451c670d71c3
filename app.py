"""alphaprune web app: `make run`, then open http://127.0.0.1:8501.

Entry point: page navigation, the session defaults and a sidebar showing what is loaded.
Pages (in pages/) stay thin: widgets, then calls into alphaprune/ui/session.py and the
library. The server listens on 127.0.0.1 only and takes uploads up to server.maxUploadSize
(.streamlit/config.toml); `make run ADDRESS=0.0.0.0` serves the network.
"""

import streamlit as st

from alphaprune.ui.session import ANALYSIS, FILES, MODEL, RESULT, init_state, model_name

st.set_page_config(page_title="alphaprune", page_icon=":material/insights:", layout="wide")
init_state()

pages = {
    "Analyse": [
        st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
        st.Page("pages/spectra.py", title="Spectra", icon=":material/show_chart:"),
    ],
    "Prune": [
        st.Page("pages/allocation.py", title="Allocation", icon=":material/tune:"),
        st.Page("pages/prune.py", title="Prune & evaluate", icon=":material/content_cut:"),
        st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
    ],
    "Learn": [st.Page("pages/about.py", title="About", icon=":material/school:")],
}
page = st.navigation(pages)
status = st.sidebar.empty()


def _sidebar_status() -> None:
    loaded, analysis, result = (st.session_state.get(k) for k in (MODEL, ANALYSIS, RESULT))
    with status.container():
        if loaded is None and st.session_state.get(FILES) is not None:
            st.caption(f"Model: **{model_name()}**, analysed from its files (not loaded)")
        else:
            st.caption("Loaded model: " + (f"**{loaded.name}**" if loaded else "none"))
        if analysis is not None:
            st.caption(f"Analysed: {len(analysis.prunable)} prunable matrices")
        if result is not None:
            st.caption(f"Last prune: {result.ppl_before:.2f} -> {result.ppl_after:.2f} perplexity")


# Drawn before the page, so it stays when the page stops early (st.stop ends the whole run,
# a `finally` after it draws nothing), and again after it, with what this run loaded.
_sidebar_status()
page.run()
_sidebar_status()
