"""Tensors of 2 GiB or more load: MLX dimensions are 32-bit, byte buffers must not be 1-D."""

from mlxstore import buffers


def test_alloc_over_two_gib_reshapes_to_the_tensor():
    n = (1 << 31) + 8192
    shape = ((n // 2) // 4096, 4096)
    raw, view = buffers.alloc_bytes(n, ("uint16", shape))
    assert view.nbytes == n and view.ndim == 1
    view[-2:] = b"\x34\x12"
    t = buffers.as_tensor(raw, "uint16", shape)
    assert t.shape == shape and t[-1, -1].item() == 0x1234
