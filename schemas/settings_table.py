"""The README's table of settings, generated from ``SETTINGS_FIELDS``.

Run as ``python -m schemas.settings [--update-readme]``; ``tests/test_settings.py`` checks
that the README matches.
"""

from __future__ import annotations

from pathlib import Path

from schemas.settings import SETTINGS_FIELDS, env_name, flag_name


def markdown_table() -> str:
    """The README's configuration table (regenerate with ``python -m schemas.settings``)."""
    lines = ["| Flag | Environment variable | Default | Roles | Meaning |", "|---|---|---|---|---|"]
    for field in SETTINGS_FIELDS:
        default = "(hostname)" if field.name == "node_id" else ("unset" if field.default is None
                                                                else f"`{field.default}`")
        lines.append(f"| `{flag_name(field.name)}` | `{env_name(field.name)}` | {default} | "
                     f"{field.metadata['roles']} | {field.metadata['help']} |")
    return "\n".join(lines)


def update_readme(path: Path) -> None:
    """Rewrite the table between the settings-table markers of the README."""
    text = path.read_text("utf-8")
    start = text.index("<!-- settings-table:start")
    start = text.index("\n", start) + 1
    end = text.index("<!-- settings-table:end -->")
    path.write_text(text[:start] + markdown_table() + "\n" + text[end:], "utf-8")
