"""The Python snippets of docs/integrations.md, run as written, with a test server's URL and key.

Imported by the tests (`tests.snippets`) and by the framework scripts run in virtualenvs of their
own (`snippets`, beside them), so it needs nothing but the standard library.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"


def run_snippet(heading: str, replacements: dict[str, str], namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the first Python block under ``## heading`` with each key replaced by its value;
    returns the names it defined."""
    section = DOCS.read_text().split(f"## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no Python snippet under {heading!r}"
    code = match.group(1)
    for old, new in replacements.items():
        assert old in code, f"{old!r} is not in the snippet under {heading!r}"
        code = code.replace(old, new)
    namespace = {} if namespace is None else namespace
    exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace
