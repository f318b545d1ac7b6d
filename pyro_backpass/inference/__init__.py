"""Inference over a model program: the greedy backward pass and vectorised rescoring."""

from .backward import BackwardResult, backward_pass, check_clamp, empty_score, impute
from .score import enumerated_sites, trace_log_score

__all__ = ["BackwardResult", "backward_pass", "check_clamp", "empty_score", "impute", "enumerated_sites",
           "trace_log_score"]
