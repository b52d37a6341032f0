"""titan-spec: torchrun-native RL post-training with lossless speculative rollouts."""

__version__ = "0.1.0"
