"""The disk cache: stable keys, round trips, rebuilds on config change and on corruption."""

import dataclasses

import pytest
import torch

from pyro_backpass.data import cache


@dataclasses.dataclass(frozen=True)
class _Cfg:
    n: int = 3
    names: tuple[str, ...] = ("a", "b")


def _builder(calls):
    def build():
        calls.append(1)
        return {"x": torch.arange(6, dtype=torch.uint8).view(2, 3), "m": torch.tensor([True, False])}, {"p": [1, 2]}

    return build


def test_key_is_stable_and_config_sensitive():
    k = cache.config_key("objects", _Cfg())
    assert k == cache.config_key("objects", _Cfg()) and len(k) == 64
    assert k != cache.config_key("objects", _Cfg(n=4))
    assert k != cache.config_key("scenes", _Cfg())
    assert k != cache.config_key("objects", _Cfg(), extra={"code": "x"})
    assert k != cache.config_key("objects", _Cfg(), version=cache.FORMAT_VERSION + 1)
    # Dict order must not matter.
    assert cache.config_key("k", {"a": 1, "b": 2}) == cache.config_key("k", {"b": 2, "a": 1})


def test_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path
    monkeypatch.delenv("PYRO_BACKPASS_CACHE")
    assert cache.cache_root().name == "pyro_backpass"


def test_round_trip_and_reuse(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path))
    calls = []
    t1, m1 = cache.load_or_build("objects", _Cfg(), _builder(calls))
    t2, m2 = cache.load_or_build("objects", _Cfg(), _builder(calls))
    assert len(calls) == 1
    assert torch.equal(t1["x"], t2["x"]) and t2["x"].dtype == torch.uint8 and t2["m"].dtype == torch.bool
    assert m1 == m2 == {"p": [1, 2]}
    cache.load_or_build("objects", _Cfg(n=5), _builder(calls))  # a changed config is a new entry
    assert len(calls) == 2
    cache.load_or_build("objects", _Cfg(), _builder(calls), cache=False)
    assert len(calls) == 3
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_tensors", "bad_json"])
def test_corrupt_entry_is_rebuilt(tmp_path, damage):
    calls = []
    cache.load_or_build("objects", _Cfg(), _builder(calls), root=tmp_path)
    tensor_path, json_path = cache.entry_paths("objects", cache.config_key("objects", _Cfg()), tmp_path)
    if damage == "truncate":
        tensor_path.write_bytes(tensor_path.read_bytes()[:20])
    elif damage == "flip":
        b = bytearray(tensor_path.read_bytes())
        b[-1] ^= 0xFF
        tensor_path.write_bytes(bytes(b))
    elif damage == "delete_tensors":
        tensor_path.unlink()
    else:
        json_path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        t, _ = cache.load_or_build("objects", _Cfg(), _builder(calls), root=tmp_path)
    assert len(calls) == 2 and t["x"].shape == (2, 3)
    assert cache.load_entry("objects", cache.config_key("objects", _Cfg()), tmp_path) is not None


def test_missing_sidecar_means_absent(tmp_path):
    # A tensor file without its JSON (interrupted between the two writes) is not an entry.
    key = cache.config_key("objects", _Cfg())
    tensor_path, _ = cache.entry_paths("objects", key, tmp_path)
    tensor_path.parent.mkdir(parents=True)
    tensor_path.write_bytes(b"junk")
    assert cache.load_entry("objects", key, tmp_path) is None


def test_uint8_round_trip():
    x = torch.rand(3, 5, 5)
    u = cache.to_uint8(x)
    assert u.dtype == torch.uint8
    assert (cache.from_uint8(u) - x).abs().max() <= 0.5 / 255 + 1e-6
