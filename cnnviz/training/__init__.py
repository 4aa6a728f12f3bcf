"""Train-once networks: trained as jobs, then applied inline in milliseconds.

- :mod:`.loop`: one resumable training loop (Adam, progress, previews, evaluations, cancel,
  checkpoints) that every trained network uses,
- :mod:`.checkpoint`: networks and optimizer state as safetensors bytes with JSON metadata,
- :mod:`.style_net` and :mod:`.fast_style`: fast style transfer (Johnson et al. 2016),
- :mod:`.triplet`: a triplet-loss embedding head on a frozen layer (FaceNet),
- :mod:`.verifier`: a logistic verification unit on two embeddings' difference (abs or chi-square),
- :mod:`.augment`: the seeded random views both train on.
"""

from .checkpoint import CheckpointError, pack, read_meta, unpack
from .fast_style import FastStyleTrainer, PerceptualLoss, load_transform_net
from .loop import TrainCallbacks, Trainer, step_generator
from .style_net import TransformNet, stylize
from .triplet import (
    MININGS,
    EmbeddingHead,
    TripletData,
    TripletTrainer,
    batch_hard_triplet_loss,
    head_embed,
    load_head,
    semi_hard_triplet_loss,
    triplet_data,
    verification_accuracy,
)
from .verifier import PAIR_FORMS, PairTrainer, VerificationHead, load_verifier

__all__ = [
    "MININGS", "PAIR_FORMS", "CheckpointError", "EmbeddingHead", "FastStyleTrainer", "PairTrainer", "PerceptualLoss",
    "TrainCallbacks", "Trainer", "TransformNet", "TripletData", "TripletTrainer", "VerificationHead",
    "batch_hard_triplet_loss", "head_embed", "load_head", "load_transform_net", "load_verifier", "pack", "read_meta",
    "semi_hard_triplet_loss", "step_generator", "stylize", "triplet_data", "unpack", "verification_accuracy",
]
