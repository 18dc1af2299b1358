"""The size rules of CONTRIBUTING.md, checked: no module over 600 lines outside tests/, demo/ and bench/,
and no function over 80 lines in a service module (``services``, a ``services/`` package, the ledger's and the
statements' service modules). Prints each offender with its size; exits 1 when there is one."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("config", "portal", "devices", "payments", "support", "dashboard", "selfservice", "tools")
MAX_MODULE_LINES = 600
MAX_SERVICE_FUNCTION_LINES = 80
#: Service modules that are not called ``services``: one module per job in a big part.
SERVICE_MODULES = {
    "payments/ledger/confirm.py",
    "payments/ledger/verify.py",
    "payments/ledger/channels.py",
    "payments/ledger/matching.py",
    "payments/statements/imports.py",
    "payments/statements/reconcile.py",
    "payments/statements/receipts.py",
    "payments/statements/mappings.py",
    "payments/statements/allocation.py",
    "payments/statements/bulk.py",
    "payments/statements/entries.py",
    "portal/webhooks.py",
    "portal/audit.py",
    "portal/outbox.py",
}


def is_service(relative: str) -> bool:
    parts = relative.split("/")
    return parts[-1] == "services.py" or "services" in parts[:-1] or relative in SERVICE_MODULES


def problems() -> list[str]:
    found = []
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/migrations/" in relative:
                continue
            text = path.read_text()
            lines = len(text.splitlines())
            if lines > MAX_MODULE_LINES:
                found.append(f"{relative}: {lines} lines (at most {MAX_MODULE_LINES})")
            if not is_service(relative):
                continue
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_SERVICE_FUNCTION_LINES:
                        limit = MAX_SERVICE_FUNCTION_LINES
                        found.append(f"{relative}:{node.lineno} {node.name}: {length} lines (at most {limit})")
    return found


if __name__ == "__main__":
    offenders = problems()
    for line in offenders:
        print(line)
    sys.exit(1 if offenders else 0)
