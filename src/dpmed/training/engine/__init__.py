"""The private-training engine every trainer uses (classifier, GAN discriminator, CVAE,
federated client). See :mod:`dpmed.training.engine.trainer` for the loop and the task contract.

Public API::

    from dpmed.training.engine import EngineSettings, PrivateTrainer, seed_globals

    seed_globals(seed)                       # before building the model (public init)
    trainer = PrivateTrainer(EngineSettings(epochs=R * E, batch_size=B, epsilon=eps, delta=d),
                             model, optimizer, dataset, seed=seed, device=dev,
                             checkpoint=private_dir / "run.pt", fingerprint=fp)
    trainer.run_epochs(E, losses_fn)         # losses_fn(model, batch) -> (b,) per-sample losses
    g = trainer.guarantee(released="the model weights")
"""

from dpmed.training.engine.plan import DPPlan, EngineSettings
from dpmed.training.engine.privatise import GRAD_SAMPLE_MODES, make_privatiser
from dpmed.training.engine.randomness import TEST_NOISE_ENV, seed_globals
from dpmed.training.engine.trainer import PrivateTrainer
from dpmed.training.numerics import PRECISIONS, full_float32

__all__ = ["DPPlan", "EngineSettings", "GRAD_SAMPLE_MODES", "PRECISIONS", "PrivateTrainer", "TEST_NOISE_ENV",
           "full_float32", "make_privatiser", "seed_globals"]
