"""The tree keeps the shape DESIGN.md promises: no import cycle between the top-level parts of
the package, no module reaching for another's private names, model code free of parallelism,
small files and functions, and the public API importable as documented."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "titan_spec"
MAX_FILE_LINES, MAX_FUNCTION_LINES = 300, 60


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text(), str(path))


def _imports(name: str, path: Path, tree) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import, function-level ones too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
    return [(module, names) for module, names in found if module.startswith("titan_spec")]


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_no_import_cycle_between_top_level_parts():
    edges: dict[str, set[str]] = {}
    for name, path, tree in _modules():
        for module, _ in _imports(name, path, tree):
            if _part(module) != _part(name) and module != "titan_spec":
                edges.setdefault(_part(name), set()).add(_part(module))

    def reaches(start, goal, seen):
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False
    cycles = sorted((a, b) for a, targets in edges.items() for b in targets
                    if reaches(b, a, {b}))
    assert not cycles, f"import cycles between parts of titan_spec: {cycles}"


def test_models_import_no_parallel_code_and_rl_no_trainer():
    for name, path, tree in _modules():
        imported = [module for module, _ in _imports(name, path, tree)]
        if _part(name) == "models":
            assert not [m for m in imported if _part(m) == "parallel"], name
        if _part(name) == "rl":
            assert not [m for m in imported if _part(m) in ("job", "train")], name


def test_no_private_names_imported_across_modules():
    offenders = [(name, module, taken) for name, path, tree in _modules()
                 for module, names in _imports(name, path, tree)
                 for taken in names if taken.startswith("_") and module != name]
    assert not offenders, offenders


def test_files_and_functions_stay_small():
    long_files, long_functions = [], []
    for name, path, tree in _modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            long_files.append((name, lines))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append((name, node.name, length))
    assert not long_files and not long_functions, (long_files, long_functions)


def test_public_api_as_documented():
    from titan_spec.drafters import build_drafter
    from titan_spec.kernels import rejection_sample
    from titan_spec.models import build_model
    from titan_spec.rollout import Completion, RolloutEngine, SamplingParams

    assert all(callable(x) for x in (build_drafter, rejection_sample, build_model,
                                     RolloutEngine, SamplingParams, Completion))


COMM_CALLS = {"send", "recv", "isend", "irecv", "broadcast", "all_reduce", "all_gather",
              "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor", "all_to_all",
              "all_to_all_single", "barrier", "gather", "scatter", "broadcast_object_list",
              "all_gather_object", "batch_isend_irecv", "new_group"}


def test_every_collective_goes_through_the_comm_module():
    """titan_spec/comm.py checks each call's tensors against its plane (GPU_REVIEW: a host
    tensor on NCCL fails only on a GPU machine); a call around it is unchecked."""
    offenders = []
    for name, _path, tree in _modules():
        if name == "titan_spec.comm":
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "dist"
                    and node.func.attr in COMM_CALLS):
                offenders.append(f"{name}:{node.lineno} dist.{node.func.attr}")
    assert not offenders, offenders
