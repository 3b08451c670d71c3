"""alphaprune web app: `make run`, then open http://127.0.0.1:8501.

Entry point: page navigation and the state shared by all pages.
"""

import streamlit as st

from alphaprune.ui.session import init_state

st.set_page_config(page_title="alphaprune", layout="wide")
init_state()
pages = [st.Page("pages/spectra.py", title="Model & spectra", default=True)]
st.navigation(pages).run()
