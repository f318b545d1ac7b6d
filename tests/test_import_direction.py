"""The library must never import models/, guides/ or scripts/ (DESIGN §2)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"models", "guides", "scripts"}


def _imported_roots(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def test_library_does_not_import_models_guides_or_scripts():
    offenders = []
    for path in sorted((ROOT / "pyro_backpass").rglob("*.py")):
        for root, lineno in _imported_roots(path):
            if root in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno} imports {root}")
    assert not offenders, "pyro_backpass must not import models/guides/scripts:\n" + "\n".join(offenders)


def test_checker_catches_a_back_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom models.activation import activation_model\n")
    assert ("models", 2) in list(_imported_roots(bad))
