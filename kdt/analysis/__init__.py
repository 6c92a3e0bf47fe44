"""kdt.analysis: stability, linear mode connectivity and weight correlation of (sub)networks.

Pure, jit-able metrics (pytrees in, scalars out):

* :mod:`~kdt.analysis.interpolation`: the linear path between two networks, the error barrier
  (instability), BatchNorm re-estimation along the path;
* :mod:`~kdt.analysis.stability`: L2 distance and angle between masked parameters (stability to
  data order and to pruning), the stable / matching verdicts and their onsets;
* :mod:`~kdt.analysis.correlation`: init <-> trained weight correlation (Pearson, top-p magnitude
  overlap) over surviving weights, pairwise mask overlap.

The experiments ``lmc`` and ``correlation`` that train the networks and write results live in
:mod:`kdt.experiments.lmc` and :mod:`kdt.experiments.correlation`, their pictures in :mod:`kdt.plots`.
"""

from kdt.analysis.correlation import pairwise_mask_overlap
from kdt.analysis.correlation import pearson
from kdt.analysis.correlation import top_fraction
from kdt.analysis.correlation import top_overlap
from kdt.analysis.correlation import weight_correlation
from kdt.analysis.interpolation import BATCH_NORM_MODES
from kdt.analysis.interpolation import alpha_grid
from kdt.analysis.interpolation import error_barrier
from kdt.analysis.interpolation import interpolated_variables
from kdt.analysis.interpolation import lerp
from kdt.analysis.interpolation import reestimate_batch_stats
from kdt.analysis.stability import angle
from kdt.analysis.stability import global_norm
from kdt.analysis.stability import is_matching
from kdt.analysis.stability import is_stable
from kdt.analysis.stability import l2_distance
from kdt.analysis.stability import onset
from kdt.analysis.stability import pair_metrics

__all__ = (
    "BATCH_NORM_MODES",
    "alpha_grid",
    "angle",
    "error_barrier",
    "global_norm",
    "interpolated_variables",
    "is_matching",
    "is_stable",
    "l2_distance",
    "lerp",
    "onset",
    "pair_metrics",
    "pairwise_mask_overlap",
    "pearson",
    "reestimate_batch_stats",
    "top_fraction",
    "top_overlap",
    "weight_correlation",
)
