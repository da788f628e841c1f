"""Tensors of 2 GiB or more load: MLX dimensions are 32-bit, byte buffers must not be 1-D."""

import pytest

from mlxstore import buffers


@pytest.mark.parametrize("unified", [True, False], ids=["mlx-memory", "host-then-copy"])
def test_read_buffer_over_two_gib_reshapes_to_the_tensor(monkeypatch, unified):
    monkeypatch.setattr(buffers, "unified_memory", lambda: unified)
    n = (1 << 31) + 8192
    shape = ((n // 2) // 4096, 4096)
    raw, view = buffers.read_buffer(n, ("uint16", shape))
    assert view.nbytes == n and view.ndim == 1
    view[-2:] = b"\x34\x12"
    t = buffers.as_tensor(raw, "uint16", shape)
    del raw, view
    assert t.shape == shape and t[-1, -1].item() == 0x1234
