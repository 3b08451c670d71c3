"""Streamlit helpers: the only part of alphaprune that imports Streamlit."""
