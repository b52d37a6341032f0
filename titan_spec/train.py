"""Entry point: parse the config -> preflight / dry run -> this rank's role -> run -> teardown.

    python -m titan_spec.train --config debug_model.toml [--section.key=value ...]
    python -m titan_spec.train --config ... --preflight --world-size N   (checks only)

With job.dry_run=true it prints the memory plan instead of training (dry_run.py); under
--preflight it then exits 3 (fits) or 4 (does not fit) so that the launcher starts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from titan_spec.config import ConfigError, load_config


def _setup_logging(log_all_ranks: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 or log_all_ranks else logging.WARNING
    prefix = f"[rank{rank}] " if log_all_ranks else ""
    logging.basicConfig(level=level, format=f"{prefix}%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)


def _plan_only(cfg, args) -> int | None:
    """The dry run and the launcher's preflight: an exit code, or None to train."""
    from titan_spec.preflight import preflight

    if cfg.job.dry_run:
        from titan_spec import dry_run

        world = dry_run.world_size_for(cfg, args.world_size)
        preflight(cfg, world)
        fits = dry_run.main(cfg, world) == 0
        if args.preflight:
            return 3 if fits else 4
        return 0 if fits else 1
    if args.preflight:
        from titan_spec.components.checkpoint import check_load_path
        from titan_spec.components.run_lock import check_free
        from titan_spec.formats.initial_load import model_args
        from titan_spec.preflight_data import check_data

        preflight(cfg, args.world_size or int(os.environ.get("WORLD_SIZE", "1")))
        args_of_model = model_args(cfg)
        # Once, before any worker starts (each worker would print the same error).
        check_data(cfg, args_of_model.vocab_size, args_of_model.max_seq_len)
        check_load_path(cfg.checkpoint)
        check_free(cfg.job.dump_folder)
        return 0
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="titan_spec.train", allow_abbrev=False)
    parser.add_argument("--config", "--job.config_file", dest="config", default=None,
                        help="TOML path, or a NAME looked up in train_configs/")
    parser.add_argument("--preflight", action="store_true",
                        help="validate config and layout for --world-size, then exit")
    parser.add_argument("--world-size", type=int, default=None)
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
        _setup_logging(cfg.metrics.log_all_ranks)
        code = _plan_only(cfg, args)
        if code is not None:
            return code
    except ValueError as err:  # ConfigError, bad layout, bad checkpoint: the user's to fix
        kind = "config error" if isinstance(err, ConfigError) else "error"
        print(f"titan-spec: {kind}: {err}", file=sys.stderr)
        return 2
    return _train(cfg)


def _train(cfg) -> int:
    """Build this rank's role and run it. Every way out of a multi-rank run ends the process
    here without interpreter teardown, and a failed rank never waits in a collective."""
    from titan_spec.components import run_status, stop_signal
    from titan_spec.job import build_rank
    from titan_spec.runtime import close_distributed, exit_now

    stop_signal.install()
    multi_rank = int(os.environ.get("WORLD_SIZE", "1")) > 1
    finish = exit_now if multi_rank else (lambda code: code)
    rank = int(os.environ.get("RANK", "0"))
    try:
        env, role = build_rank(cfg)
    except BaseException as err:  # noqa: BLE001 - every error is reported, once
        run_status.report_failure(err, rank)
        return finish(2 if isinstance(err, ValueError) else 1)
    try:
        role.run()
    except stop_signal.Preempted as stopped:
        role.close()
        if env.is_main:
            run_status.write_status("preempted", step=stopped.step, signal=stopped.signal_name,
                                    checkpoint=stopped.checkpoint)
            print(f"titan-spec: {stopped}", file=sys.stderr, flush=True)
        if cfg.async_rl.rollout_ranks == 0:  # the rollout ranks of async RL are not waiting
            close_distributed()
        return finish(stop_signal.PREEMPTED_EXIT)
    except BaseException as err:  # noqa: BLE001
        run_status.report_failure(err, env.rank)
        return finish(1)
    role.close()
    close_distributed()
    return finish(0)


if __name__ == "__main__":
    sys.exit(main())
