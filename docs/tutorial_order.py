"""The order of the tutorials in the gallery (sphinx-gallery's ``within_subsection_order``): a reader's path."""

ORDER = ["plot_first_vae.py", "plot_anomaly_scores.py", "plot_bounds_linear_gaussian.py", "plot_kl_vanishing.py",
         "mnist_likelihood.py", "gpu_training.py"]


def key(filename: str) -> tuple[int, str]:
    """Listed tutorials in ORDER, any other after them by name."""
    return (ORDER.index(filename) if filename in ORDER else len(ORDER), filename)
