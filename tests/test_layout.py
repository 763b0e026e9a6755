"""The layout rules of docs/architecture.md that a linter cannot see: settings declared once, modules kept small.

The layer contract itself is import-linter's (``make lint``); these hold what
it cannot: every setting the code reads exists in the settings and in
``.env.example``, nothing probes settings with a default, and a module grows
past the size limit only with its reason in its docstring.
"""

from __future__ import annotations

import ast
import re

from django.conf import settings

from tests.conftest import REPO_ROOT

CODE_DIRS = ("apps", "workers", "project")
MODULE_LINE_LIMIT = 400
# A long module says why in its docstring with this phrase.
LONG_MODULE_MARK = "Long on purpose:"


def _code_files() -> list:
    files = []
    for name in CODE_DIRS:
        files += [p for p in (REPO_ROOT / name).rglob("*.py") if "migrations" not in p.parts]
    return sorted(files)


def _settings_reads(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "settings"
            and node.attr.isupper()
        ):
            names.add(node.attr)
    return names


def test_every_setting_the_code_reads_is_declared():
    missing = {}
    for path in _code_files():
        if path.parts[-2] == "settings":
            continue
        for name in _settings_reads(ast.parse(path.read_text())):
            if not hasattr(settings, name):
                missing.setdefault(name, []).append(str(path.relative_to(REPO_ROOT)))
    assert missing == {}


def test_no_setting_is_read_with_a_hidden_default():
    offenders = []
    for path in _code_files():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"getattr\(\s*settings\s*,", line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{lineno}")
    assert offenders == []


def test_every_environment_variable_of_the_settings_is_in_env_example():
    base = (REPO_ROOT / "project" / "settings" / "base.py").read_text()
    read = set(re.findall(r"env\.get_[a-z_]+\(\s*\"([A-Z0-9_]+)\"", base))
    example = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", (REPO_ROOT / ".env.example").read_text(), re.M))
    assert read, "the settings read no environment variable: the pattern is wrong"
    assert sorted(read - example) == []


def test_long_modules_say_why():
    unexplained = []
    for path in _code_files():
        text = path.read_text()
        if len(text.splitlines()) > MODULE_LINE_LIMIT and LONG_MODULE_MARK not in (
            ast.get_docstring(ast.parse(text)) or ""
        ):
            unexplained.append(f"{path.relative_to(REPO_ROOT)} ({len(text.splitlines())} lines)")
    assert unexplained == []
