"""Config fuzzing: the shipped configs mutated (wrong types, unknown keys, out-of-range numbers,
impossible layouts for a world size, a key given twice) either pass the launcher's preflight or
end with one `titan-spec:` error line, no traceback, in under 3 s, before any worker starts."""

import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from titan_spec import train
from titan_spec.config.schema import TABLES

CONFIGS = sorted(p.name for p in (Path(train.__file__).parents[1] / "train_configs").glob("*.toml"))
# Keys whose job is to run something (a memory plan, a download-free load) rather than be
# checked: the preflight of a fuzzed value would do real work, not refuse it.
UNFUZZED = {"job.dry_run", "job.dump_folder", "checkpoint.initial_load_path",
            "checkpoint.load_path", "drafter.init_from", "task.jsonl.path", "model.tokenizer"}


def _keys(cls, prefix: str) -> list[tuple[str, object, tuple]]:
    """(dotted key, default, allowed values) of every leaf field of a table."""
    found = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            found += _keys(type(default), f"{prefix}{f.name}.")
        elif f"{prefix}{f.name}" not in UNFUZZED:
            found.append((f"{prefix}{f.name}", default, f.metadata.get("choices", ())))
    return found


KEYS = [key for name, cls in TABLES.items() for key in _keys(cls, f"{name}.")]
WRONG_TYPE = st.sampled_from(["abc", "", "[1, 2]", "1.5", "true", "{a = 1}", "nan"])


def _values(default, choices) -> st.SearchStrategy:
    """Mostly values of the field's type (in range or not), sometimes of another type."""
    if isinstance(default, bool):
        typed = st.sampled_from(["true", "false"])
    elif isinstance(default, int):
        typed = st.one_of(st.integers(-2, 12), st.sampled_from([64, 4096, 10**9])).map(str)
    elif isinstance(default, float):
        typed = st.sampled_from(["0", "0.5", "1", "-1", "2", "1e9", "1e-12", "inf"])
    elif choices:
        typed = st.sampled_from([*choices, "bogus"])
    else:
        typed = st.sampled_from([str(default), "x", "1,2", "0, 99"])
    return st.one_of(typed, typed, typed, WRONG_TYPE)


def _override(key) -> st.SearchStrategy:
    return _values(key[1], key[2]).map(lambda value: f"--{key[0]}={value}")


overrides = st.lists(
    st.one_of(
        st.sampled_from(KEYS).flatmap(_override),
        st.sampled_from(KEYS).flatmap(_override),
        st.sampled_from(KEYS).map(lambda key: f"--{key[0]}x=1"),  # unknown key
        st.sampled_from(["--nosuch.key=1", "--job=1", "--rl.steps", "--.=1", "rl.steps=3"]),
    ),
    min_size=1, max_size=4)


@pytest.mark.timeout(600)
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=st.sampled_from(CONFIGS), extra=overrides, world=st.integers(1, 9),
       twice=st.booleans())
def test_mutated_configs_pass_or_fail_with_one_line(config, extra, world, twice, capsys,
                                                    tmp_path):
    if twice:  # the same key given again with another value: the last one wins
        extra = extra + [extra[0].rsplit("=", 1)[0] + "=7"] if "=" in extra[0] else extra
    argv = ["--config", config, "--preflight", "--world-size", str(world),
            f"--job.dump_folder={tmp_path}", *extra]
    start = time.perf_counter()
    code = train.main(argv)  # an escaping exception is the traceback this test forbids
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert elapsed < 3, (argv, elapsed)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("titan-spec: "), (argv, err)
        assert "Traceback" not in err
    assert not list(tmp_path.iterdir()), "the preflight wrote into the dump folder"
    sys.stdout.flush()
