"""Distributions of the activation model: the observation model (eq. 8-9) and the per-element
maximiser of the backward pass (eq. 13)."""

from .functional import argmax_joint, max_joint, normal_log_density
from .piecewise_gaussian import PiecewiseGaussian

__all__ = ["PiecewiseGaussian", "argmax_joint", "max_joint", "normal_log_density"]
