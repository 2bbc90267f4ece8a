"""Saliency criteria, the pruner, prune histories and compression."""

from mlprunes.pruning.compress import build_sliced, compress
from mlprunes.pruning.history import (PruningError, apply_history, block_offsets, locate,
                                      masks_from_history, spec_after)
from mlprunes.pruning.pruner import Pruner
from mlprunes.pruning.saliency import (CRITERIA, FisherSaliency, L1LayerSaliency,
                                       L1MeanSaliency, L1Saliency, L1SignedSaliency,
                                       RandomSaliency, Saliency, make_saliency)

__all__ = [
    "build_sliced", "compress", "PruningError", "block_offsets", "locate", "masks_from_history", "spec_after",
    "Pruner", "CRITERIA", "FisherSaliency", "L1Saliency", "L1MeanSaliency", "L1LayerSaliency",
    "L1SignedSaliency", "RandomSaliency", "Saliency",
    "make_saliency", "apply_history",
]

