"""Config dataclasses as ``--kebab-case`` flags: only given flags override, optional fields take values."""

import argparse
from dataclasses import dataclass

import pytest

from pyro_backpass.cli import add_config_args, config_from_args, set_threads


@dataclass(frozen=True)
class _Config:
    steps: int = 3
    rate: float = 0.5
    name: str = "a"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    threshold: float | None = None
    cap: int | None = 4


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_args(parser, _Config)
    return config_from_args(_Config, parser.parse_args(argv))


def test_flags_override_only_what_is_given():
    assert _parse([]) == _Config()
    got = _parse(["--steps", "5", "--flag", "true", "--sizes", "3,4", "--threshold", "0.7"])
    assert got == _Config(steps=5, flag=True, sizes=(3, 4), threshold=0.7)


def test_optional_fields_take_none():
    assert _parse(["--cap", "none"]) == _Config(cap=None)
    assert _parse(["--cap", "None", "--threshold", "0.2"]) == _Config(cap=None, threshold=0.2)
    assert _parse(["--cap", "7"]).cap == 7
    with pytest.raises(SystemExit):
        _parse(["--steps", "none"])  # not optional
    with pytest.raises(SystemExit):
        _parse(["--cap", "nothing"])


def test_bad_values_are_argparse_errors():
    with pytest.raises(SystemExit):
        _parse(["--flag", "maybe"])
    with pytest.raises(SystemExit):
        _parse(["--threshold", "high"])
    with pytest.raises(ValueError, match="--threads"):
        set_threads(0)


def test_evaluate_split_is_checked():
    from pyro_backpass.vision.evaluation import EvaluateConfig, scene_configs

    assert scene_configs(EvaluateConfig(split="val", seed=2), 32)["test"].split == "val"
    with pytest.raises(ValueError, match="split"):
        scene_configs(EvaluateConfig(split="train"), 32)
    # Parse and mask settings are checked when the config is built, before any scene is rendered.
    with pytest.raises(ValueError, match="duplicate_iou"):
        EvaluateConfig(duplicate_iou=2.0)
    with pytest.raises(ValueError, match="strategy"):
        EvaluateConfig(strategy="beam")
