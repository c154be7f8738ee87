"""Numba kernels: every hot loop of mfdask, arrays in and arrays out.

Kernels are ``@njit(nogil=True, cache=True)``: they release the GIL so a worker's
threads can run them side by side, and they are compiled once per machine and loaded
from the on-disk cache by every process after that. Nothing here imports Dask, pandas
or the engine, validates input or logs.
"""
