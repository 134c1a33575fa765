"""The README's settings table and .env.example stay true to the settings classes.

Run as a script to rewrite both from the classes: ``python -m tests.test_docs``.
"""

from __future__ import annotations

import re
from pathlib import Path

from apim_server.config import settings_table as apim_settings
from llm_mock_server.config import settings_table as mock_settings

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def rows() -> list[tuple[str, str, str, str]]:
    return [("llm-mock", *r) for r in mock_settings()] + [("apim", *r) for r in apim_settings()]


def table() -> str:
    lines = ["| service | setting | default | meaning |", "|---|---|---|---|"]
    for service, name, default, description in rows():
        shown = f"`{default}`" if default else "(empty)"
        lines.append(f"| {service} | `{name}` | {shown} | {description.replace('|', '/')} |")
    return "\n".join(lines)


def env_example() -> str:
    out = ["# Every setting of both services with its default. Copy to .env and edit.", ""]
    current = None
    for service, name, default, description in rows():
        if service != current:
            out += ["", f"# --- {service} ---"] if current else [f"# --- {service} ---"]
            current = service
        out += [f"# {description}", f"{name}={default}"]
    return "\n".join(out) + "\n"


def readme_with_table(readme: str) -> str:
    return re.sub(f"{START}.*?{END}", f"{START}\n{table()}\n{END}", readme, flags=re.S)


def test_readme_table_matches_the_settings_classes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert START in readme and END in readme
    assert readme == readme_with_table(readme), "README settings table is stale: python -m tests.test_docs"


def test_env_example_lists_every_setting_with_its_default() -> None:
    stale = ".env.example is stale: python -m tests.test_docs"
    assert (ROOT / ".env.example").read_text() == env_example(), stale


def test_every_setting_is_described() -> None:
    assert all(description for *_, description in rows())
    assert len({name for _, name, _, _ in rows()}) == len(rows())


if __name__ == "__main__":
    (ROOT / "README.md").write_text(readme_with_table((ROOT / "README.md").read_text()))
    (ROOT / ".env.example").write_text(env_example())
