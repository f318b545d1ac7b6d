"""Learning: the observation model fit (Sec. 2.3.1) and hard EM (Sec. 2.3.2)."""

from .hard_em import HardEMConfig, hard_em, usage_stats
from .observation import ObservationFit, ObservationFitConfig, fit_observation
from .sources import TensorActivations, iterate_batches

__all__ = ["HardEMConfig", "hard_em", "usage_stats", "ObservationFit", "ObservationFitConfig", "fit_observation",
           "TensorActivations", "iterate_batches"]
