"""About page: heavy-tailed self-regularisation and AlphaPruning in a few pictures, for teaching."""

import streamlit as st

from alphaprune.plots import heavy_tail_demo_figure
from alphaprune.ui.charts import chart

st.title("About: why spectra tell you where to prune")

st.markdown(
    """
**Heavy-tailed self-regularisation (HT-SR).** Take a weight matrix W and the eigenvalues
of W<sup>T</sup>W (its squared singular values): their histogram is the *empirical spectral
density* (ESD). For a random matrix it follows the Marchenko-Pastur law, a compact bulk.
Training builds correlations into W, and the ESD grows a **heavy tail** that follows a
power law p(λ) ~ λ<sup>-α</sup> beyond some λ<sub>min</sub>. The exponent α measures how
well trained a layer is: **α ≈ 2-4 well trained, larger α closer to random** (α > 6
under-trained, α > 8 usually a spurious fit).
""",
    unsafe_allow_html=True,
)
seed = st.slider("Random seed of the demo matrices", 0, 9, 0, key="about_seed")
chart(st, heavy_tail_demo_figure(seed=seed), key="about_demo_chart", name="heavy_tail_demo")
st.markdown(
    """
**Fitting α.** For a candidate λ<sub>min</sub>, the maximum-likelihood exponent is
α = 1 + n / Σ ln(λ<sub>i</sub>/λ<sub>min</sub>) over the n tail eigenvalues; the choice of
λ<sub>min</sub> matters. *ks* tries every eigenvalue and keeps the smallest
Kolmogorov-Smirnov distance (WeightWatcher's default); *peak* searches only near the ESD's
peak (AlphaPruning's default, with a quirk in its lower bound that we keep for
compatibility; *peak_fixed* is the window as intended); *mid* takes the median. The Spectra
page shows D and α for every candidate, so you can see the choice.

**AlphaPruning** (Lu et al., NeurIPS 2024) turns α into layer-wise sparsity: average α per
block, map it linearly onto [1 - ε, 1 + ε], and rescale so that the parameter-weighted
mean is the target sparsity S. Less-trained blocks (high α) lose more weights. ε sets the
range; at high S and ε a block can exceed 100% in the original code, so here every ratio is
held below a ceiling (0.99 by default; 1.0 lets such a block be pruned whole) and the rest
is rescaled. It needs no data, only the weights;
OWL (Yin et al., ICML 2024), its data-driven rival, allocates by activation outliers.

**Pruners.** Magnitude removes the smallest |W|; Wanda (Sun et al., ICLR 2024) scores
|W<sub>ij</sub>| · ||X<sub>j</sub>|| with calibration activations, per output row;
SparseGPT (Frantar & Alistarh, ICML 2023) removes weights by an approximate second-order
criterion and updates the rest to compensate.

**References.** Martin & Mahoney, *Implicit self-regularization in deep neural networks*,
JMLR 22 (2021); Martin, Peng & Mahoney, *Predicting trends in the quality of
state-of-the-art neural networks without access to training or testing data*, Nature
Communications 12 (2021); Lu, Zhou, Liu, Mahoney, Yang, *AlphaPruning: using heavy-tailed
self regularization theory for improved layer-wise pruning of LLMs*, NeurIPS 2024 (arXiv
2410.10912); Yin et al., *Outlier weighed layerwise sparsity (OWL)*, ICML 2024; Sun et al.,
*A simple and effective pruning approach for LLMs (Wanda)*, ICLR 2024; Frantar & Alistarh,
*SparseGPT*, ICML 2023; Clauset, Shalizi & Newman, *Power-law distributions in empirical
data*, SIAM Review 2009.
""",
    unsafe_allow_html=True,
)
