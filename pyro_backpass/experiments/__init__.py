"""Experiments: measured comparisons run by ``scripts/`` (the model and guides are passed in as arguments)."""

from .exact_vs_greedy import ExactVsGreedyConfig, positive_blobs, run_exact_vs_greedy, sample_scene, superimpose

__all__ = ["ExactVsGreedyConfig", "positive_blobs", "run_exact_vs_greedy", "sample_scene", "superimpose"]
