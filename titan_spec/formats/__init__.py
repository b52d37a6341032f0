"""Checkpoint formats other than our own DCP: Hugging Face safetensors folders (into a run's
shards and out of it)."""
