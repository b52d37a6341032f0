"""Parallelism: meshes (ParallelDims), FSDP2, tensor / expert parallel, activation checkpointing.
Kept import-light: submodules are imported where used."""
