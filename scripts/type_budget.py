"""Run mypy on apps/ and workers/ and hold its error count and ``type: ignore`` count to a budget.

The budget (``scripts/type_budget.json``) may only fall: a change that adds a
type error or a ``type: ignore`` fails ``make lint``; a change that removes
some should lower the numbers in the file (the script says so). Usage::

    .venv/bin/python scripts/type_budget.py          # check
    .venv/bin/python scripts/type_budget.py --write  # record the current counts
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET = ROOT / "scripts" / "type_budget.json"
CHECKED = ("apps", "workers")
_IGNORE = re.compile(r"#\s*type:\s*ignore")
_SUMMARY = re.compile(r"Found (\d+) errors? in")


def count_ignores() -> int:
    total = 0
    for package in CHECKED:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                total += len(_IGNORE.findall(path.read_text(encoding="utf-8")))
    return total


def count_errors() -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 1):
        sys.exit(f"mypy itself failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    return len(errors), result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the current counts as the budget")
    args = parser.parse_args()
    errors, output = count_errors()
    ignores = count_ignores()
    print(f"mypy on {', '.join(CHECKED)}: {errors} errors, {ignores} 'type: ignore' comments")
    if args.write:
        BUDGET.write_text(json.dumps({"errors": errors, "type_ignores": ignores}, indent=2) + "\n")
        print(f"budget written to {BUDGET.relative_to(ROOT)}")
        return 0
    budget = json.loads(BUDGET.read_text())
    over = []
    if errors > budget["errors"]:
        over.append(f"errors {errors} > budget {budget['errors']}")
    if ignores > budget["type_ignores"]:
        over.append(f"type: ignore {ignores} > budget {budget['type_ignores']}")
    if over:
        print(output, end="")
        print("type budget exceeded: " + "; ".join(over), file=sys.stderr)
        return 1
    if errors < budget["errors"] or ignores < budget["type_ignores"]:
        print(f"below budget ({budget}): lower it with `python scripts/type_budget.py --write`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
