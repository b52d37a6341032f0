"""Kernels: Triton on CUDA, each with a pure-PyTorch reference of the same signature."""
