"""CUDA checks of the backward pass (skipped without a GPU; ``scripts/gpu_check.sh`` runs them)."""

import pytest
import torch

from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.handlers import GreedyMessenger
from pyro_backpass.inference import backward_pass
from pyro_backpass.scoring import score_table

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _scene(h, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.relu(torch.randn((n,) + s.shape, generator=g, dtype=h.dtype)) for s in h.specs]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_score_table_on_cuda_matches_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 10, 10, generator=g, dtype=dtype)
    comps = torch.relu(torch.randn(1, 3, 5, 8, 10, 10, generator=g, dtype=dtype))
    params = (torch.tensor(0.4, dtype=dtype), torch.full((8, 1, 1), 0.1, dtype=dtype),
              torch.zeros(8, 1, 1, dtype=dtype), torch.full((8, 1, 1), 0.3, dtype=dtype),
              torch.full((8, 1, 1), 0.5, dtype=dtype))
    cpu = score_table(x, comps, 1, *params)
    gpu = score_table(x.cuda(), comps.cuda(), 1, *(p.cuda() for p in params))
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-2}
    torch.testing.assert_close(gpu.cpu(), cpu, **tol)


def test_greedy_pass_on_cuda_equals_cpu():
    specs = toy_specs(size=12, channels=(3, 8, 8, 16), K=4, radii=(0, 0, 1, 2))
    h = toy_hierarchy(n_categories=2, seed=3, specs=specs).double()
    f_bu = _scene(h, 4, 1)
    cpu = backward_pass(activation_model, h, f_bu, beam=2)
    gpu = backward_pass(activation_model, h.cuda(), [x.cuda() for x in f_bu], beam=2)
    for k, v in cpu.hidden.items():
        assert torch.equal(gpu.hidden[k].cpu(), v), k
    torch.testing.assert_close(gpu.total.cpu(), cpu.total)
    assert gpu.f_td[0].device.type == "cuda"


def test_layer_loop_has_no_host_device_sync():
    specs = toy_specs(size=12, channels=(3, 8, 8, 16), K=4, radii=(0, 0, 1, 2))
    h = toy_hierarchy(n_categories=2, seed=4, specs=specs).cuda()
    f_bu = [x.cuda() for x in _scene(h, 8, 2)]
    backward_pass(activation_model, h, f_bu)  # warm-up (allocator, kernels)
    import pyro
    msngr = GreedyMessenger(beam=1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad(), pyro.validation_enabled(False), msngr:
            activation_model(h, f_bu=f_bu, form="profile", validate=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert msngr.get_result().total.device.type == "cuda"


def test_polyphase_components_on_cuda_match_cpu():
    from pyro_backpass.topdown import TopDownConv

    torch.manual_seed(0)
    m = TopDownConv(8, 4, 5, (12, 12), upsample="nearest").double()
    x = torch.relu(torch.randn(3, 8, 6, 6, dtype=torch.float64))
    with torch.no_grad():
        cpu = m.components(x)
        gpu = m.cuda().components(x.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu)
