"""Where CUDA keeps a buffer the host writes and the GPU reads: advice to managed memory.

MLX's CUDA backend moves an array into managed memory once the host sees it (the buffer
protocol). A managed page migrates to whichever processor touched it last, so a buffer the
host writes and the GPU then reads faults its pages across the bus both ways. Advised to
live in host memory and to be mapped for the GPU, it stays put: host writes run at memory
speed and GPU kernels read it over the bus. The advice goes through the CUDA runtime that
MLX itself loaded (found in the process's mappings), with ctypes.

Nothing depends on it for correctness: on other backends, or where no runtime is found or
it refuses, `prefer_host` does nothing and returns False.
"""

from __future__ import annotations

import ctypes

import mlx.core as mx

SET_PREFERRED_LOCATION = 3  # cudaMemAdviseSetPreferredLocation
SET_ACCESSED_BY = 5  # cudaMemAdviseSetAccessedBy
LOCATION_DEVICE = 1  # cudaMemLocationTypeDevice
LOCATION_HOST = 2  # cudaMemLocationTypeHost


class MemLocation(ctypes.Structure):
    """cudaMemLocation: where an advice points (a device and its ordinal, or the host)."""

    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


def loaded_runtime(maps: str = "/proc/self/maps") -> ctypes.CDLL | None:
    """The libcudart this process has mapped (MLX's own), or None."""
    try:
        with open(maps) as f:
            paths = [line.split()[-1] for line in f if "/libcudart.so" in line]
    except OSError:
        return None
    for path in paths:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def advise(runtime, address: int, nbytes: int, advice: int, location: MemLocation) -> bool:
    """cudaMemAdvise on [address, address + nbytes); True when the runtime accepted it.

    CUDA 13 takes a location by value as `cudaMemAdvise`; CUDA 12 names that `_v2`.
    """
    version = ctypes.c_int(0)
    if runtime.cudaRuntimeGetVersion(ctypes.byref(version)) != 0:
        return False
    fn = runtime.cudaMemAdvise if version.value >= 13000 else getattr(runtime, "cudaMemAdvise_v2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, MemLocation]
    fn.restype = ctypes.c_int
    return fn(address, nbytes, advice, location) == 0


def _on_cuda() -> bool:
    cuda = getattr(mx, "cuda", None)
    return cuda is not None and cuda.is_available() and mx.default_device() == mx.gpu


def prefer_host(view: memoryview, runtime=None) -> bool:
    """Advise that `view` (the host view of an MLX array: managed memory on CUDA) stays in
    host memory and is mapped for the current GPU. False where that does not apply."""
    if runtime is None:
        if not _on_cuda():
            return False
        runtime = loaded_runtime()
        if runtime is None:
            return False
    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    device = ctypes.c_int(0)
    if runtime.cudaGetDevice(ctypes.byref(device)) != 0:
        return False
    return (advise(runtime, address, view.nbytes, SET_PREFERRED_LOCATION, MemLocation(LOCATION_HOST, 0))
            and advise(runtime, address, view.nbytes, SET_ACCESSED_BY, MemLocation(LOCATION_DEVICE, device.value)))  # fmt: skip
