"""Untrusted data never executes: no module of the package, its tools or benchmarks unpickles
(torch.load without weights_only=True, pickle, broadcast_object_list), evaluates text
(eval / exec), or lets transformers run a checkpoint's own code (trust_remote_code)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for part in ("titan_spec", "tools", "bench")
                 for p in (ROOT / part).rglob("*.py"))
UNPICKLING_CALLS = {"broadcast_object_list", "recv_object_list", "all_gather_object",
                    "gather_object", "scatter_object_list"}


def _findings(path: Path) -> list[str]:
    tree, found = ast.parse(path.read_text()), []
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(tree):
        where = f"{shown}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal")
                   for n in names):
                found.append(f"{where}: imports a pickler")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("eval", "exec") and isinstance(func, ast.Name):
            found.append(f"{where}: {name}()")
        if name == "load" and owner == "torch":
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        if name in UNPICKLING_CALLS and owner in ("dist", "torch"):
            found.append(f"{where}: {name} unpickles what it receives")
        if "trust_remote_code" in keywords:
            value = keywords["trust_remote_code"]
            if not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{where}: trust_remote_code")
    return found


def test_no_source_unpickles_evaluates_or_trusts_remote_code():
    found = [line for path in SOURCES for line in _findings(path)]
    assert not found, "\n".join(found)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import pickle\nimport torch\nimport torch.distributed as dist\n"
                   "torch.load('x')\neval('1')\ndist.broadcast_object_list([1])\n"
                   "f(trust_remote_code=True)\n")
    assert len(_findings(bad)) == 5
