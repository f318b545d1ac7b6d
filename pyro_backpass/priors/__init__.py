"""Swappable priors over the mixture indices, ``P(γ^l | γ^{(l+1):})`` (eq. 7).

Every prior answers :meth:`GammaPrior.log_prob_table(layer, history) <GammaPrior.log_prob_table>`;
the model calls nothing else, so swapping priors needs no change to it.

- :class:`UniformPrior`: ``-log K_l``.
- :class:`NGramPrior` / :class:`UnigramPrior`: conditional multinomials fitted from counts with a
  symmetric Dirichlet prior.
- :class:`CallablePrior`: any user function returning (log-)scores.
- :func:`prior_from_config`: rebuild from ``prior.config()`` (then ``load_state_dict``).
"""

from .base import GammaPrior
from .callable_prior import CallablePrior
from .config import prior_from_config
from .tables import NGramPrior, UniformPrior, UnigramPrior

__all__ = ["GammaPrior", "UniformPrior", "NGramPrior", "UnigramPrior", "CallablePrior", "prior_from_config"]
