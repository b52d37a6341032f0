"""Kernels: Triton on CUDA, each with a pure-PyTorch reference of the same signature.

    from titan_spec.kernels import rejection_sample
"""

from .rejection_reference import rejection_sample_reference
from .rejection_sampler import rejection_sample

__all__ = ["rejection_sample", "rejection_sample_reference"]
