"""Distributions of the activation model: the observation model (eq. 8-9) and the per-element
maximiser of the backward pass (eq. 13)."""

from .functional import max_joint, normal_log_density
from .piecewise_gaussian import PiecewiseGaussian

__all__ = ["PiecewiseGaussian", "max_joint", "normal_log_density"]
