"""DCP checkpoints: model + optimizer (resharded on load to any world size or layout), LR
schedule, step / data position, and RNG states.

A save is written to `step-N.tmp/`, then rank 0 adds `train_state.json` and a `manifest.json`
(size and sha256 of every file) and renames the folder to `step-N/` in one atomic rename. Only
folders with a manifest that verifies count as checkpoints, so a crash mid-save, or a file
truncated later, is never loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from titan_spec import comm

from .run_status import last_line

log = logging.getLogger("titan_spec")
STEP_RE = re.compile(r"step-(\d+)")
MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupted or does not fit the model."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in _data_files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def verify(folder: Path, hashes: bool = True) -> None:
    """Raise CheckpointError naming the first missing, truncated or altered file (altered:
    only with `hashes`; without, the check reads no data, as the launcher's preflight does)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{folder} has no {MANIFEST}: the save never completed.")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is unreadable ({err}); the "
                              "folder is damaged.") from None
    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: file {rel} is missing.")
        if path.stat().st_size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {folder}: {rel} has {path.stat().st_size} bytes, the manifest says "
                f"{expected['bytes']} (truncated or overwritten)."
            )
        if hashes and _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {rel} does not match its sha256.")


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Finished step folders (not *.tmp), oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := STEP_RE.fullmatch(p.name))]
    return sorted(found)


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def find_resume_point(cfg, folder: Path, group=None) -> Path | None:
    """The explicit load_path (must verify), else the newest verifying checkpoint in `folder`
    (with checkpoint.resume), else None. Rank 0 reads and hashes the files and every rank of
    the control group `group` (None: the world's) takes its answer: one rank reads a 235B
    checkpoint through, not every rank. Its error is every rank's: rank 0 alone reports it."""
    if not _dist():
        return _reported_resume_point(cfg, folder)
    outcome, failure = None, None
    if dist.get_rank() == 0:
        try:
            path = _resume_point(cfg, folder)
            outcome = {"path": str(path) if path is not None else None}
        except Exception as err:  # any failure: the peers must not wait for an answer
            failure, outcome = err, {"error": f"{err}"}
    outcome = comm.broadcast_json(outcome, 0, group if group is not None
                                  else comm.control_group())
    if "error" in outcome:
        err = failure or CheckpointError(outcome["error"])
        err.same_on_every_rank = True
        raise err
    return Path(outcome["path"]) if outcome["path"] is not None else None


def _reported_resume_point(cfg, folder: Path) -> Path | None:
    try:
        return _resume_point(cfg, folder)
    except CheckpointError as err:
        err.same_on_every_rank = True
        raise


def check_load_path(cfg) -> None:
    """The launcher's check of checkpoint.load_path: a step folder whose manifest lists files
    that exist with their sizes (hashes are the workers' to check)."""
    if cfg.load_path:
        _verified_load_path(cfg.load_path, hashes=False)


def _verified_load_path(load_path: str, hashes: bool = True) -> Path:
    path = Path(load_path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint.load_path={path} is not a folder; give a "
                              "step-N folder of a run's checkpoint folder.")
    verify(path, hashes)
    return path


def _resume_point(cfg, folder: Path) -> Path | None:
    if cfg.load_path:
        return _verified_load_path(cfg.load_path)
    if not (cfg.enable and cfg.resume):
        return None
    newest = newest_valid(folder, on_damaged=lambda err: log.warning(
        "skipping damaged checkpoint (%s); trying an older one", err))
    found = list_checkpoints(folder)
    if newest is None and found:  # starting over would overwrite them with the same steps
        raise CheckpointError(
            f"every checkpoint in {folder} is damaged ({', '.join(p.name for _, p in found)}); "
            "nothing to resume from. Restore one, or start over with "
            "--checkpoint.resume=false (saves of the same steps then replace those folders).")
    return newest


def newest_valid(folder: Path, hashes: bool = True, on_damaged=None) -> Path | None:
    """The newest step folder that verifies (without `hashes`: complete, sizes right);
    on_damaged(err) hears of each newer one that does not."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            verify(path, hashes)
            return path
        except CheckpointError as err:
            if on_damaged is not None:
                on_damaged(err)
    return None


class CheckpointManager:
    def __init__(self, cfg, dump_folder: str, model, optimizer, scheduler, rank: int,
                 world_size: int, extra: dict | None = None, group=None,
                 description: dict | None = None):
        """extra: name -> (module, optimizer or None) saved next to the model (the drafter,
        the KL reference); a checkpoint without them (an SFT-only run) still loads, reporting
        what it had.
        group: the ranks that hold the model (the learner's in async RL; None: every rank);
        rank and world_size are positions in it, and rank 0 of it writes the metadata.
        description: what the checkpoint holds (formats/description.py), saved as model.json
        so that tools read it without the job's config."""
        self.description = description
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.rank, self.world_size, self.group = rank, world_size, group
        self.extra = extra or {}
        self.folder = Path(dump_folder) / cfg.folder

    def _barrier(self) -> None:
        if _dist():
            comm.barrier(group=self.group)

    def _state(self, extras) -> dict:
        state = {"model": get_model_state_dict(self.model),
                 "optim": get_optimizer_state_dict(self.model, self.optimizer)}
        for name in extras:
            module, optimizer = self.extra[name]
            state[name] = get_model_state_dict(module)
            if optimizer is not None:
                state[f"{name}_optim"] = get_optimizer_state_dict(module, optimizer)
        return state

    def _saved_extras(self, path: Path) -> list[str]:
        keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        return [name for name in self.extra if any(k.startswith(f"{name}.") for k in keys)]

    def save(self, step: int, train_state: dict, skip: tuple = ()) -> Path:
        """skip: extra entries that hold nothing worth saving yet (e.g. a KL reference before
        RL has started). A save that fails (a full disk, a write error) removes its
        temporary folder, keeps every finished checkpoint and raises one CheckpointError."""
        tmp = self.folder / f"step-{step}.tmp"
        try:
            return self._save(step, train_state, skip, tmp)
        except (OSError, RuntimeError, CheckpointException) as err:
            # torch.save reports a full disk as a zip-writer RuntimeError: say what is free.
            free = shutil.disk_usage(self.folder).free if self.folder.is_dir() else 0
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            kept = newest_valid(self.folder, hashes=False)  # no rehashing of every file
            failure = CheckpointError(
                f"could not save checkpoint step-{step} in {self.folder} "
                f"({free / 2**20:.1f} MiB were free on its filesystem): {last_line(err)}. "
                f"Removed the partial {tmp.name}; the newest valid checkpoint, "
                f"{kept.name if kept else 'none'}, is kept.")
            # DCP gathers every rank's error and raises it on all of them.
            failure.same_on_every_rank = isinstance(err, CheckpointException)
            raise failure from None

    def step_folder(self, step: int) -> Path:
        return self.folder / f"step-{step}"

    def _save(self, step: int, train_state: dict, skip: tuple, tmp: Path) -> Path:
        final = self.step_folder(step)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        extras = [name for name in self.extra if name not in skip]
        dcp.save(self._state(extras), checkpoint_id=str(tmp), process_group=self.group)
        torch.save({"cpu": torch.get_rng_state(), "world_size": self.world_size},
                   tmp / f"rng_rank{self.rank}.pt")
        self._barrier()
        if self.rank == 0:
            state = dict(train_state, step=step, scheduler=self.scheduler.state_dict(),
                         world_size=self.world_size)
            (tmp / TRAIN_STATE).write_text(json.dumps(state, default=str))
            if self.description is not None:
                (tmp / "model.json").write_text(json.dumps(self.description, indent=1))
            write_manifest(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate()
        self._barrier()
        log.info("saved checkpoint %s", final)
        return final

    def _rotate(self) -> None:
        keep = self.cfg.keep_latest_k
        if keep > 0:
            for _, path in list_checkpoints(self.folder)[:-keep]:
                shutil.rmtree(path, ignore_errors=True)

    def load(self, path: Path) -> dict:
        try:
            extras = self._saved_extras(path)
            state = self._state(extras)
            dcp.load(state, checkpoint_id=str(path), process_group=self.group)
            set_model_state_dict(self.model, state["model"])
            set_optimizer_state_dict(self.model, self.optimizer, state["optim"])
            for name in extras:
                module, optimizer = self.extra[name]
                set_model_state_dict(module, state[name])
                if optimizer is not None:
                    set_optimizer_state_dict(module, optimizer, state[f"{name}_optim"])
        except (Exception, CheckpointException) as err:  # DCP wraps per-rank tracebacks
            raise CheckpointError(
                f"could not load checkpoint {path} into this model ({last_line(err)}). "
                "Check that model.name/flavor match the run that saved it."
            ) from err
        train_state = json.loads((path / TRAIN_STATE).read_text())
        self.scheduler.load_state_dict(train_state.pop("scheduler"))
        rng_file = path / f"rng_rank{self.rank}.pt"
        if train_state.get("world_size") == self.world_size and rng_file.is_file():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["cpu"])
        train_state["loaded_extra"] = extras
        log.info("resumed from %s (step %d)", path, train_state["step"])
        return train_state
