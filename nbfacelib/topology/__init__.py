"""nbfacelib.topology: persistent homology for TopoFR.

- :func:`h0_pairs`: H0 persistence pairs (MST edges and deaths) of a dense distance matrix,
  vectorised, on the matrix's device;
- :func:`pairwise_distances` / :func:`input_distances`: distances without a B x B x D tensor;
- :func:`alignment_loss`: TopoFR's structure alignment, paper (Eq. 2) or official form;
- :mod:`.diagrams`: gudhi Rips diagrams H0..Hk, persim bottleneck / Wasserstein distances and
  persistence images (libraries imported lazily).
"""

from .alignment import FORMS, alignment_loss
from .diagrams import diagram_distance, finite, persistence_images, rips_diagrams, total_persistence
from .distances import input_distances, pairwise_distances
from .h0 import H0Pairs, check_distance_matrix, h0_pairs

__all__ = [
    "FORMS",
    "H0Pairs",
    "alignment_loss",
    "check_distance_matrix",
    "diagram_distance",
    "finite",
    "h0_pairs",
    "input_distances",
    "pairwise_distances",
    "persistence_images",
    "rips_diagrams",
    "total_persistence",
]
