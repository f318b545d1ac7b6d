"""The observation model ``P(f_bu | f_td)`` as a Pyro distribution (eq. 8-9)."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import _standard_normal, broadcast_all, lazy_property

from .functional import normal_log_density

__all__ = ["PiecewiseGaussian"]

_NO_SAMPLE_SHAPE = torch.Size()


class PiecewiseGaussian(TorchDistribution):
    """Elementwise distribution of a bottom-up activation given its top-down one (eq. 9):

    ``f_bu ~ N(f_td, σ1)`` if ``f_td ≥ λ`` (the object drives the unit; the boundary is "on"),
    else ``f_bu ~ N(β, σ2)`` (the background does).

    Event shape ``()``; batch shape is the broadcast of all five parameters, so per-layer scalars
    and a per-channel ``σ1`` of shape ``(C, 1, 1)`` combine with ``f_td`` of shape
    ``(N, C, H, W)``, and parameters with extra leading (enumeration) dims broadcast as usual.
    Use ``.to_event(3)`` to score whole ``(C, H, W)`` maps. Given ``f_td`` this is simply a
    Normal whose loc and scale are chosen per element, so :meth:`rsample` is reparameterised (the
    branch choice itself is not differentiable in ``f_td``).

    The supplement's coin ``s`` at ``f_td = λ`` is a device of MAP inference
    (:func:`~pyro_backpass.distributions.max_joint`); as a distribution the boundary is "on".

    :param torch.Tensor f_td: (...) top-down activations.
    :param lam: (...) threshold ``λ``.
    :param beta: (...) background mean ``β``.
    :param sigma1: (...) on-branch scale ``σ1 > 0``, e.g. per channel ``(C, 1, 1)``.
    :param sigma2: (...) off-branch scale ``σ2 > 0``.
    :param validate_args: check parameters and values (Pyro/torch convention).
    """

    arg_constraints = {
        "f_td": constraints.real,
        "lam": constraints.real,
        "beta": constraints.real,
        "sigma1": constraints.positive,
        "sigma2": constraints.positive,
    }
    support = constraints.real
    has_rsample = True

    def __init__(self, f_td, lam, beta, sigma1, sigma2, validate_args=None):
        self.f_td, self.lam, self.beta, self.sigma1, self.sigma2 = broadcast_all(f_td, lam, beta, sigma1, sigma2)
        super().__init__(self.f_td.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PiecewiseGaussian, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in self.arg_constraints:
            setattr(new, name, getattr(self, name).expand(batch_shape))
        super(PiecewiseGaussian, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @lazy_property
    def on(self) -> torch.Tensor:
        """(batch_shape) bool: where the object branch ``f_td ≥ λ`` applies."""
        return self.f_td >= self.lam

    @lazy_property
    def loc(self) -> torch.Tensor:
        """(batch_shape) mean of the branch in force: ``f_td`` where :attr:`on`, else ``β``."""
        return torch.where(self.on, self.f_td, self.beta)

    @lazy_property
    def scale(self) -> torch.Tensor:
        """(batch_shape) scale of the branch in force: ``σ1`` where :attr:`on`, else ``σ2``."""
        return torch.where(self.on, self.sigma1, self.sigma2)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2)

    def log_prob(self, value):
        """:param torch.Tensor value: (..., batch_shape) values of ``f_bu``.

        :returns: (broadcast of value and batch shape) elementwise log densities.
        """
        if self._validate_args:
            self._validate_sample(value)
        # Selecting loc/scale before evaluating one density (rather than torch.where over two
        # densities) keeps gradients free of the NaN/inf of the branch not taken.
        return normal_log_density(value, self.loc, self.scale)

    def rsample(self, sample_shape=_NO_SAMPLE_SHAPE):
        shape = self._extended_shape(sample_shape)
        eps = _standard_normal(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + eps * self.scale
