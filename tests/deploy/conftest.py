"""Static validation of the deployment files: nothing is built or started here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DOCKER = REPO_ROOT / "docker"


def entrypoint_roles() -> dict[str, list[str]]:
    """``{role: argv}`` of every ``exec`` line in docker/entrypoint.sh (``"$@"`` dropped)."""
    text = (DOCKER / "entrypoint.sh").read_text()
    roles: dict[str, list[str]] = {}
    for match in re.finditer(r"^\s+([a-z][a-z| -]*)\)\n(.*?);;", text, flags=re.M | re.S):
        names, body = match.group(1), match.group(2)
        command = " ".join(
            line.strip().rstrip("\\").strip()
            for line in body.splitlines()
            if line.strip() and not line.strip().startswith("#")
        )
        command = command.removeprefix("exec ").strip()
        for role in names.split("|"):
            roles[role.strip()] = [arg for arg in shlex.split(command) if arg != "$@"]
    return roles


def procfile_commands() -> dict[str, list[str]]:
    """``{process: argv}`` of the Procfile, without its leading ``VAR=value`` words and ``exec``."""
    commands = {}
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        if ":" in line and not line.startswith("#"):
            name, _, command = line.partition(":")
            argv = shlex.split(command.strip())
            while argv and (argv[0] == "exec" or re.fullmatch(r"[A-Z_]+=.*", argv[0])):
                argv.pop(0)
            commands[name.strip()] = argv
    return commands


def procfile_roles() -> dict[str, list[str]]:
    """``{process: argv}`` with each ``docker/entrypoint.sh ROLE`` line resolved to the role's own command."""
    roles = entrypoint_roles()
    resolved = {}
    for name, argv in procfile_commands().items():
        assert argv[0] == "docker/entrypoint.sh", f"Procfile {name}: run it through the entrypoint, not {argv[0]}"
        resolved[name] = roles[argv[1]] + argv[2:]
    return resolved


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
