"""pyro_backpass.distributed without torch.distributed (a plain run), and ShardedSource.

The helpers with real collectives on 2 gloo processes are in tests/pyro_backpass/learning/test_distributed_em.py.
"""

import pytest
import torch

from pyro_backpass import distributed
from pyro_backpass.learning.sources import ShardedSource, TensorActivations, as_sharded


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", distributed.TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)


def test_helpers_are_identities_in_one_process():
    assert distributed.init_from_env() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert not distributed.is_distributed()
    assert torch.equal(distributed.shard(5), torch.arange(5))
    x = torch.tensor([1.5, 2.0])
    assert distributed.all_reduce_sum(x) is x and x.tolist() == [1.5, 2.0]
    got = distributed.gather_by_index(torch.tensor([[1.0], [2.0]]), torch.tensor([2, 0]), 3)
    assert got.tolist() == [[2.0], [0.0], [1.0]]
    assert distributed.gather_objects(("a", "b")) == ["a", "b"]
    assert distributed.all_gather_objects({"k": 1}) == [{"k": 1}]
    assert distributed.broadcast_object(7) == 7
    distributed.check_same("anything", {"a": 1})
    distributed.barrier()
    assert distributed.run_on_main(lambda: 42, "the answer") == 42
    with distributed.main_first("nothing"):
        pass
    with distributed.session() as on:
        assert on is False
    assert distributed.timeout_s() == 600.0


@pytest.mark.parametrize("n,world", [(10, 2), (7, 3), (2, 4), (0, 2), (100, 8)])
def test_shards_are_contiguous_and_cover_everything(n, world):
    parts = [distributed.shard(n, r, world) for r in range(world)]
    assert torch.equal(torch.cat(parts), torch.arange(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_bad_input_errors(monkeypatch):
    with pytest.raises(ValueError, match="n: expected an int >= 0, got -1"):
        distributed.shard(-1)
    with pytest.raises(ValueError, match="expected 0 <= rank < world, got 2 and 2"):
        distributed.shard(5, 2, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE: expected an integer.*'two'"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="expected 0 <= RANK < WORLD_SIZE, got 2 and 2"):
        distributed.init_from_env()
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="PYRO_BACKPASS_DIST_TIMEOUT: expected a number of seconds > 0, got 'soon'"):
        distributed.timeout_s()


def _source(n=6):
    maps = [torch.arange(n * 2, dtype=torch.float32).view(n, 2, 1, 1),
            torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)]
    return TensorActivations(maps, torch.tensor([0, 1] * (n // 2)))


def test_sharded_source_views():
    full = _source()
    view = ShardedSource.of(full, torch.tensor([3, 4, 5]))
    assert len(view) == 6 and torch.equal(view.categories, full.categories)
    assert view.local(torch.tensor([5, 0, 3, 1])).tolist() == [5, 3]
    assert view.batch(torch.tensor([4]))[1].flatten().tolist() == [4.0]
    with pytest.raises(IndexError, match=r"index: expected examples held by rank 0, got \[0\] held by another"):
        view.batch(torch.tensor([0, 4]))
    local = TensorActivations([m[3:] for m in full.maps], full.categories[3:])
    from_local = ShardedSource.from_local(local, torch.tensor([3, 4, 5]), full.categories)
    assert torch.equal(from_local.batch(torch.tensor([5, 3]))[0], full.batch(torch.tensor([5, 3]))[0])
    assert as_sharded(view) is view and torch.equal(as_sharded(full).owned, torch.arange(6))


def test_sharded_source_bad_input():
    full = _source()
    with pytest.raises(ValueError, match="owned: expected sorted distinct indices in \\[0, 6\\)"):
        ShardedSource.of(full, torch.tensor([4, 3]))
    with pytest.raises(ValueError, match="owned: expected sorted distinct indices"):
        ShardedSource.of(full, torch.tensor([6]))
    with pytest.raises(ValueError, match="local: expected 2 examples \\(one per owned index\\), got 6"):
        ShardedSource.from_local(full, torch.tensor([0, 1]), full.categories)
    with pytest.raises(ValueError, match="categories: expected shape \\(6,\\), got \\(5,\\)"):
        ShardedSource(full.batch, torch.arange(6), 6, torch.zeros(5))
