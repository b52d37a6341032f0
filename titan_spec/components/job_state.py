"""Where the job is, besides its weights: what a checkpoint's train_state.json carries."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class JobState:
    """Everything about where the job is that a checkpoint must carry, besides the weights."""

    step: int = 0
    policy_version: int = 0  # optimizer updates of the RL phase
    drafter_version: int = 0  # online drafter updates since the warm start
    drafter_warm: bool = False  # warm-started (or loaded from drafter.init_from)
    rl_start: int | None = None  # the step RL began at: the KL reference is the policy there

    def restore(self, saved: dict, loaded_extra: list[str]) -> None:
        known = {f.name for f in fields(self)}
        for key, value in saved.items():
            if key in known and (key not in ("drafter_warm", "drafter_version")
                                 or "drafter" in loaded_extra):
                setattr(self, key, value)
