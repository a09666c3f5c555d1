"""dpmed.generation: synthetic data from generative models (study B, MCGAN).

* :mod:`.gan` — the GAN as a task (:class:`MCGANTask` for the private-training engine):
  per-pair discriminator loss, generator loss, augmentation, divergence checks,
  checkpoint-selection rule (shared by the non-private loop and the engine);
* :mod:`.training` — both variants through the private-training engine: DP-MCGAN (D by DP-SGD,
  G post-processing) and the study's non-private MCGAN, with checkpoint/resume;
* :mod:`.sampling` — synthetic patches written as an HDF5 cache plus a synthetic manifest.
"""

from .gan import (CheckpointRule, GANDivergenceError, GANTrainSettings, MCGANTask, augment_patches, check_collapse,
                  check_finite, discriminator_batch_losses, discriminator_pair_losses, draw_real_targets,
                  generator_loss, max_pairwise_rms, sample_latent)
from .training import (GANPrivacySettings, generator_guarantee, load_generator, load_patches, nonprivate_guarantee,
                       train_mcgan)
from .sampling import generate_patches, synthetic_guarantee, synthetic_manifest, to_uint8, write_synthetic_set

__all__ = [
    "CheckpointRule", "GANDivergenceError", "GANTrainSettings", "MCGANTask", "augment_patches", "check_collapse",
    "check_finite", "discriminator_batch_losses", "discriminator_pair_losses", "draw_real_targets",
    "generate_patches", "generator_loss", "load_generator", "load_patches", "max_pairwise_rms",
    "nonprivate_guarantee", "sample_latent", "synthetic_guarantee", "synthetic_manifest", "to_uint8",
    "train_mcgan", "write_synthetic_set", "GANPrivacySettings", "generator_guarantee",
]
