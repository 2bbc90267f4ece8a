"""Saliency criteria, the pruner, prune histories and compression."""

from mlprunes.pruning.compress import compress
from mlprunes.pruning.history import (PruningError, apply_history, block_offsets, locate,
                                      masks_from_history, spec_after)
from mlprunes.pruning.pruner import Pruner
from mlprunes.pruning.saliency import (CRITERIA, FisherSaliency, L1Saliency, RandomSaliency,
                                       Saliency, make_saliency)

__all__ = [
    "compress", "PruningError", "block_offsets", "locate", "masks_from_history", "spec_after",
    "Pruner", "CRITERIA", "FisherSaliency", "L1Saliency", "RandomSaliency", "Saliency",
    "make_saliency", "apply_history",
]

