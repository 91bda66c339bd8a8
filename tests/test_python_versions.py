"""The modules run on Python 3.8 and later, as the labs' phy 2.0b5 environments have.

The tests run the project on the Python of `make test` only; these checks prove the syntax and
the standard library level for 3.8 without a 3.8 interpreter, with three tools that catch
different things: Python's own parser in 3.8 mode (syntax), vermin (the standard library and
newer builtins behaviour, e.g. ``dict | dict``), and an AST check for what vermin cannot see on
an untyped name (``s.removeprefix(...)``, ``list[int]`` evaluated at run time, ``zip(strict=)``).
Each check is also run on code that must fail, so that none of them passes by checking nothing.
"""
import ast
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["phy_bc_reason_plugin.py", "phy_bc_reason_demo.py"]
OLDEST = (3, 8)

# Methods and keywords newer than 3.8 that are called on names vermin cannot type.
NEWER_METHODS = {
    "removeprefix": "3.9", "removesuffix": "3.9",          # str, bytes
    "is_relative_to": "3.9", "with_stem": "3.9",           # pathlib
    "bit_count": "3.10",                                    # int
}
NEWER_KEYWORDS = {("zip", "strict"): "3.10", ("dataclass", "slots"): "3.10",
                  ("dataclass", "kw_only"): "3.10"}
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}  # subscriptable in 3.9

BAD_CODE = '''
from dataclasses import dataclass
def f(s, a: list[int], b):
    x = s.removeprefix("a")
    y = {**b} | {"x": 1}
    z = zip(a, b, strict=True)
    return dict[str, int]
@dataclass(slots=True)
class C:
    pass
'''


def _annotation_nodes(tree):
    """Nodes inside annotations (not evaluated with ``from __future__ import annotations``)."""
    nodes = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]
            annotations = [a.annotation for a in every if a is not None] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for annotation in annotations:
            if annotation is not None:
                nodes.update(id(n) for n in ast.walk(annotation))
    return nodes


def newer_than_38(source, filename="<code>"):
    """What the AST check finds in ``source``: ['line N: what (needs 3.x)', ...]."""
    tree = ast.parse(source, filename)
    lazy_annotations = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                           and any(a.name == "annotations" for a in n.names) for n in tree.body)
    skip = _annotation_nodes(tree) if lazy_annotations else set()
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Attribute) and node.attr in NEWER_METHODS:
            found.append(f"line {node.lineno}: .{node.attr} (needs {NEWER_METHODS[node.attr]})")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in BUILTIN_GENERICS:
            found.append(f"line {node.lineno}: {node.value.id}[...] at run time (needs 3.9)")
        elif isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else \
                node.func.attr if isinstance(node.func, ast.Attribute) else None
            for keyword in node.keywords:
                needs = NEWER_KEYWORDS.get((func, keyword.arg))
                if needs:
                    found.append(f"line {node.lineno}: {func}({keyword.arg}=) (needs {needs})")
    return found


def vermin(path):
    """(exit code, output) of vermin (a test requirement) checking ``path`` against 3.8."""
    out = subprocess.run(
        [str(Path(sysconfig.get_path("scripts")) / "vermin"), f"-t={OLDEST[0]}.{OLDEST[1]}-", "--no-tips",
         "--violations", "--eval-annotations", "--no-parse-comments", str(path)],
        capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("module", MODULES)
def test_syntax_parses_as_python_38(module):
    source = (ROOT / module).read_text(encoding="utf-8")
    ast.parse(source, module, feature_version=OLDEST)


@pytest.mark.parametrize("module", MODULES)
def test_no_newer_methods_or_runtime_generics(module):
    assert newer_than_38((ROOT / module).read_text(encoding="utf-8"), module) == []


@pytest.mark.parametrize("module", MODULES)
def test_vermin_finds_nothing_newer_than_38(module):
    code, output = vermin(ROOT / module)
    assert code == 0, output


def test_the_checks_catch_newer_code(tmp_path):
    """Each check finds what it is there for, on code written for Python 3.10."""
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=OLDEST)
    found = "\n".join(newer_than_38(BAD_CODE))
    for needle in (".removeprefix", "list[...]", "dict[...]", "zip(strict=)",
                   "dataclass(slots=)"):
        assert needle in found
    # Annotations are left alone only when they are not evaluated.
    assert "list[...]" not in "\n".join(
        newer_than_38("from __future__ import annotations\n" + BAD_CODE))
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_CODE)
    code, output = vermin(bad)
    assert code != 0 and "dict union" in output, output
