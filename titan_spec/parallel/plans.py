"""Model name -> its parallelize function, applied in place to a plain (meta-device) model.

The plans live with the parallel code rather than in the model registry: the model packages
stay free of parallelism, and the dependency runs one way (parallel -> models)."""

from __future__ import annotations

import difflib

from .qwen3 import parallelize_qwen3

PLANS = {"qwen3": parallelize_qwen3}


def parallelize(name: str, model, parallel_dims, parallelism, device_type: str):
    """(model name, meta model, ParallelDims, [parallelism] config, device type) -> model."""
    if name not in PLANS:
        close = difflib.get_close_matches(name, PLANS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"no parallelize plan for model '{name}'; known: "
                         f"{', '.join(PLANS)}.{hint}")
    return PLANS[name](model, parallel_dims, parallelism, device_type)
