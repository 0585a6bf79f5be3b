"""PURSUhInT: choose a teacher's hint layers by clustering its layers (arXiv:2103.00053).

- `similarity`: layer distances (CCA R^2, linear and RBF CKA, their combination);
- `clustering`: K clusters along the depth, centres = hint layers;
- `probe`: pooled layer representations on N training images;
- `selection`: the whole selection and its file; `cache`: once per teacher checkpoint;
- `for_run`: a training config's `hints:`; `plot`: the distance heat-map.
"""

from kdforge.hints.cache import cached_select
from kdforge.hints.clustering import LayerClusters, cluster_layers, initial_centres
from kdforge.hints.selection import HintFileError, HintSelection, select_hints
from kdforge.hints.similarity import METRICS, cca_r2, cka_linear, cka_rbf, distance_matrix, progress_total

__all__ = [
    "LayerClusters", "cluster_layers", "initial_centres",
    "METRICS", "cca_r2", "cka_linear", "cka_rbf", "distance_matrix", "progress_total",
    "HintFileError", "HintSelection", "select_hints", "cached_select",
]
