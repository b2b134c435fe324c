"""
Anomaly scores on a table
=========================

:class:`bayesvae.VAEDensity` is a density estimator in scikit-learn's terms: ``fit(X)``, then
``score_samples(X)`` = log p(x) per row in nats, in the units of ``X`` (the standardisation's Jacobian included).
-log p(x) is an anomaly score. :class:`bayesvae.VAEOutlierDetector` adds a threshold (``contamination``) and
``predict`` (+1 inlier, -1 outlier).

Here they meet ``GaussianMixture`` and ``IsolationForest`` on scikit-learn's breast-cancer table (569 rows,
30 features, bundled), with outliers made by the rule of the :doc:`tabular benchmark <../benchmarks-tabular>`: every
feature of an outlier is copied from an independently drawn test row, so the outliers have exactly the data's
marginals and only a model of the joint distribution can find them. One split, one seed: the benchmark page has
five splits, standard errors and more tables.
"""

# %%
# The data
# --------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import train_test_split

import bayesvae as bv

X = load_breast_cancer().data
X_train, X_test = train_test_split(X, test_size=0.3, random_state=0)
rng = np.random.default_rng(0)
n_out = len(X_test) // 10
outliers = np.stack([X_test[rng.integers(len(X_test), size=n_out), j] for j in range(X.shape[1])], axis=1)
X_eval = np.concatenate([X_test, outliers])
is_outlier = np.r_[np.zeros(len(X_test)), np.ones(n_out)]
print(f"train {X_train.shape}, test {X_test.shape} + {n_out} outliers")

# %%
# Three models, one score each
# ----------------------------
# GaussianMixture is fitted on standardised features (its EM is happier there) and its log-density gets the
# Jacobian -Σ ln s_j, so all log-likelihoods are densities of the same data in the same units. VAEDensity's
# log p(x) is an importance-sampled estimate with K = 200 samples per row (``n_importance_samples``).
density = bv.VAEDensity(latent_dim=4, hidden=(64,), max_iter=150, n_importance_samples=200,
                          random_state=0).fit(X_train)
mean, scale = X_train.mean(0), X_train.std(0)
bic = {k: GaussianMixture(k, random_state=0).fit((X_train - mean) / scale) for k in (1, 2, 3)}
gmm = min(bic.values(), key=lambda m: m.bic((X_train - mean) / scale))
forest = IsolationForest(n_estimators=200, random_state=0).fit(X_train)

log_p = {
    "VAEDensity": density.score_samples(X_eval),
    f"GaussianMixture ({gmm.n_components} by BIC)": gmm.score_samples((X_eval - mean) / scale) - np.log(scale).sum(),
}
anomaly = {name: -lp for name, lp in log_p.items()}
anomaly["IsolationForest"] = -forest.score_samples(X_eval)
for name, score in anomaly.items():
    held_out = f"held-out log p(x) {log_p[name][: len(X_test)].mean():8.3f} nats" if name in log_p else " " * 32
    print(f"{name:28s} {held_out}   ROC-AUC {roc_auc_score(is_outlier, score):.3f}")
print(f"VAEDensity stopped after {density.n_iter_} epochs (early stopping on 15 % of the training rows)")

# %%
# The scores of inliers and outliers
# ----------------------------------
fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
for ax, (name, score) in zip(axes, anomaly.items()):
    bins = np.histogram_bin_edges(score, 30)
    ax.hist(score[is_outlier == 0], bins, alpha=0.6, label="test rows")
    ax.hist(score[is_outlier == 1], bins, alpha=0.8, label="outliers")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("anomaly score")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %%
# A detector with a threshold
# ---------------------------
# ``contamination`` sets the share of training rows called outliers; ``predict`` follows scikit-learn's direction
# (-1 outlier) and ``decision_function`` is negative for outliers.
detector = bv.VAEOutlierDetector(contamination=0.05, latent_dim=4, hidden=(64,), max_iter=150,
                                 n_importance_samples=200, random_state=0).fit(X_train)
flags = detector.predict(X_eval)
print(f"flagged: {np.sum(flags[is_outlier == 1] == -1)} of {n_out} outliers, "
      f"{np.sum(flags[is_outlier == 0] == -1)} of {len(X_test)} test rows")
assert set(np.unique(flags)) <= {-1, 1}
assert np.array_equal(flags == -1, detector.decision_function(X_eval) < 0)
