"""alphaprune: layer spectra, heavy-tail metrics and layer-wise sparsity for LLMs.

Library entry points (no Streamlit anywhere except `alphaprune.ui`):

    from alphaprune.models import load_model
    from alphaprune.analysis import analyze
    loaded = load_model("smollm2-135m")
    result = analyze(loaded.model)
    print(result.layers[0].alpha_peak)

CLI: `python -m alphaprune analyze --help`.
"""

__version__ = "0.1.0"
