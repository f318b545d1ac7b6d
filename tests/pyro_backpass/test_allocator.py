import platform

import pytest
import torch

from pyro_backpass.allocator import keep_freed_memory


def test_applies_on_glibc_and_is_idempotent():
    first = keep_freed_memory()
    assert first is keep_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True
    # Large blocks are still served correctly after the switch (heap, not mmap).
    big = torch.ones(8 << 20)
    assert float(big.sum()) == 8 << 20
    del big
    again = torch.zeros(8 << 20)
    assert float(again.abs().sum()) == 0.0


@pytest.mark.parametrize("bad", [-1, 5000, 1.5, True, "64"])
def test_rejects_bad_top_pad(bad):
    with pytest.raises(ValueError, match="top_pad_mb"):
        keep_freed_memory(bad)
