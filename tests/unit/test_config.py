import pytest

from titan_spec.config import ConfigError, load_config, to_toml
from titan_spec.config.loader import CONFIG_DIR
from titan_spec.preflight import preflight

# Each shipped config and the world size it is written for (README "Configs").
SHIPPED = {"debug_model.toml": 2, "debug_moe.toml": 2, "debug_moe_async.toml": 4,
           "235b_moe_async.toml": 256}


def test_every_shipped_config_passes_preflight_at_its_world_size():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.toml")) == sorted(SHIPPED)
    for name, world_size in SHIPPED.items():
        dims = preflight(load_config(name), world_size)
        assert dims.world_size <= world_size, name


def test_round_trip(tmp_path):
    cfg = load_config("debug_model.toml", ["--training.seq_len=77", "--job.name=x y \"q\""])
    path = tmp_path / "again.toml"
    path.write_text(to_toml(cfg))
    assert load_config(str(path)) == cfg


def test_name_lookup_with_and_without_suffix():
    assert load_config("debug_model") == load_config("debug_model.toml")


def test_cli_override_wins_over_file():
    cfg = load_config("debug_model.toml", ["--optimizer.lr=0.5", "--sft.steps", "7"])
    assert cfg.optimizer.lr == 0.5 and cfg.sft.steps == 7


def test_int_widens_to_float():
    assert load_config(None, ["--optimizer.lr=1"]).optimizer.lr == 1.0


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[training]\nglobal_batchsize = 4\n")
    with pytest.raises(ConfigError, match=r"\[training\]\.global_batchsize in .*bad\.toml.*"
                                          r"Did you mean 'global_batch_size'"):
        load_config(str(path))


def test_unknown_table_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'optimizer'"):
        load_config(None, ["--optimiser.lr=1"])


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[sft]\nsteps = "ten"\n')
    with pytest.raises(ConfigError, match=r"\[sft\]\.steps in .*bad\.toml: expected int"):
        load_config(str(path))


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="expected an integer, got boolean"):
        load_config(None, ["--sft.steps=true"])


def test_bad_choice_lists_valid_values():
    with pytest.raises(ConfigError, match="cosine, linear, constant"):
        load_config(None, ["--lr_scheduler.decay=exp"])


def test_impossible_value():
    with pytest.raises(ConfigError, match="min_digits"):
        load_config(None, ["--task.arithmetic.min_digits=5", "--task.arithmetic.max_digits=2"])


def test_draft_length_options_are_checked():
    with pytest.raises(ConfigError, match="constant, heuristic"):
        load_config(None, ["--drafter.schedule=dynamic"])
    with pytest.raises(ConfigError, match=r"\[drafter\]\.confidence_threshold: must be in"):
        load_config(None, ["--drafter.confidence_threshold=1.5"])
    cfg = load_config(None, ["--drafter.schedule=heuristic", "--drafter.confidence_threshold=0.4"])
    assert (cfg.drafter.schedule, cfg.drafter.confidence_threshold) == ("heuristic", 0.4)


def test_malformed_cli_argument():
    with pytest.raises(ConfigError, match="--section.key=value"):
        load_config(None, ["seq_len=3"])


def test_missing_config_suggests_closest():
    with pytest.raises(ConfigError, match="Did you mean 'debug_model.toml'"):
        load_config("debug_modle.toml")


@pytest.mark.parametrize("overrides, world, message", [
    (["--parallelism.tp=3"], 2, r"tp can be one of \[1, 2\]"),
    (["--parallelism.dp_shard=4"], 2, "world size is 2"),
    (["--parallelism.ep=2"], 2, "needs an MoE flavor"),
    (["--model.flavor=debug_moe", "--parallelism.ep=3", "--parallelism.dp_shard=3"], 3,
     "must divide num_experts|needs an MoE flavor"),
    (["--parallelism.ep=4"], 2, r"must divide dp_shard=2"),
    (["--training.global_batch_size=5"], 2, "must be divisible by"),
    (["--parallelism.tp=4"], 4, r"must divide the model's \{'n_kv_heads': 2\}"),
    (["--parallelism.tp=2", "--training.grad_accum_steps=2"], 4, None),
])
def test_layout_errors(overrides, world, message):
    cfg = load_config("debug_model.toml", overrides)
    if message is None:
        preflight(cfg, world)
        return
    with pytest.raises(ValueError, match=message):
        preflight(cfg, world)


def test_readme_config_reference_is_current():
    from pathlib import Path

    from tools.config_reference import render

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert render() in readme, "run `python -m tools.config_reference --write` to refresh README"


def test_rollout_mesh_split_errors():
    from titan_spec.preflight import preflight, split_world

    def check(world, overrides, message):
        with pytest.raises(ValueError, match=message):
            preflight(load_config("debug_model.toml", overrides), world)

    check(2, ["--async_rl.rollout_ranks=2"], "leaves no learner rank")
    check(4, ["--async_rl.rollout_ranks=3", "--async_rl.rollout_tp=2"], "must divide")
    check(4, ["--async_rl.rollout_ranks=1", "--parallelism.tp=2"],
          "learner mesh has 3 of the 4 ranks")
    check(6, ["--async_rl.rollout_ranks=3", "--async_rl.rollout_tp=3"],
          "rollout_tp=3 must divide")
    check(3, ["--async_rl.rollout_ranks=1", "--checkpoint.enable=false",
              "--rl.minibatches=2"], "rl.minibatches=1")
    with pytest.raises(ConfigError, match="rollout_ranks"):
        load_config(None, ["--async_rl.rollout_ranks=-1"])
    cfg = load_config(None, ["--async_rl.rollout_ranks=2", "--async_rl.rollout_tp=2",
                             "--rl.steps=1"])
    learner, rollout = split_world(cfg, 6)
    assert (learner.world_size, learner.dp_shard, rollout.first_rank, rollout.tp) == (4, 4, 4, 2)


def test_rl_config_errors():
    with pytest.raises(ConfigError, match="group_size"):
        load_config("debug_model.toml", ["--rl.group_size=1"])
    with pytest.raises(ConfigError, match="drafter.adaptive"):
        load_config("debug_model.toml", ["--drafter.adaptive=true", "--parallelism.tp=2"])
    with pytest.raises(ValueError, match="divisible by the 2 data-parallel"):
        preflight(load_config("debug_model.toml", ["--rl.prompts_per_step=3"]), 2)
    with pytest.raises(ValueError, match="temperature"):
        preflight(load_config("debug_model.toml", ["--rollout.temperature=0"]), 1)
    with pytest.raises(ValueError, match="minibatches"):
        preflight(load_config("debug_model.toml", ["--rl.minibatches=3"]), 2)
    with pytest.raises(ConfigError, match=r"\[drafter.eagle3\].aux_layers: '1,2'"):
        load_config("debug_model.toml", ["--drafter.kind=eagle3",
                                         "--drafter.eagle3.aux_layers=1,2"])
    with pytest.raises(ValueError, match=r"aux_layers: .*\(1, 2, 9\).*\[0, 4\)"):
        preflight(load_config("debug_model.toml", ["--drafter.kind=eagle3",
                                                   "--drafter.eagle3.aux_layers=1,2,9"]), 2)
    with pytest.raises(ValueError, match="draft_vocab_size=99 exceeds"):
        preflight(load_config("debug_model.toml", ["--drafter.kind=eagle3",
                                                   "--drafter.eagle3.draft_vocab_size=99"]), 2)
    with pytest.raises(ConfigError, match="ttt_steps"):
        load_config("debug_model.toml", ["--drafter.kind=eagle3",
                                         "--drafter.eagle3.ttt_steps=0"])


def test_moved_keys_name_their_new_place(tmp_path):
    for old, new in (("--task.max_digits=2", "task.arithmetic.max_digits"),
                     ("--drafter.warmup_steps=3", "drafter.distill_steps"),
                     ("--rl.stale_policy=drop", "async_rl.stale_batches"),
                     ("--parallelism.rollout.ranks=1", r"\[async_rl\] rollout_ranks"),
                     ("--drafter.draft_layers=2", "drafter.draft_model.layers")):
        with pytest.raises(ConfigError, match=rf"has moved: it is now {new}"):
            load_config("debug_model.toml", [old])
    path = tmp_path / "old.toml"
    path.write_text("[rl]\nmax_policy_lag = 2\n")
    with pytest.raises(ConfigError, match=r"\[rl\]\.max_policy_lag in .*old\.toml has moved"):
        load_config(str(path))


def test_a_kind_table_must_belong_to_the_chosen_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"\[task.jsonl\].path .* applies to task.name=jsonl, "
                                          r"but task.name=arithmetic"):
        load_config("debug_model.toml", ["--task.jsonl.path=x.jsonl"])
    with pytest.raises(ConfigError, match=r"\[drafter.mtp\].num_heads .* drafter.kind=eagle"):
        load_config("debug_model.toml", ["--drafter.mtp.num_heads=3"])
    path = tmp_path / "mixed.toml"
    path.write_text('[drafter]\nkind = "eagle"\n[drafter.draft_model]\nlayers = 2\n')
    with pytest.raises(ConfigError, match="mixed.toml applies to drafter.kind=draft_model"):
        load_config(str(path))
    # Choosing another kind on the command line leaves the file's own kind table alone.
    cfg = load_config("debug_model.toml", ["--task.name=jsonl", "--task.jsonl.path=x.jsonl"])
    assert cfg.task.jsonl.path == "x.jsonl" and cfg.task.arithmetic.max_digits == 3

