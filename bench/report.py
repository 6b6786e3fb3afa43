"""BENCHMARKS.md: one section for each benchmark script, each rewritten only by its own script."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "BENCHMARKS.md")
TITLE = "# Benchmarks\n"


def write_section(name: str, text: str) -> None:
    """Put text in BENCHMARKS.md as the section called name, replacing that section only."""
    block = f"<!-- {name} -->\n{text.strip()}\n<!-- /{name} -->\n"
    try:
        with open(PATH, encoding="utf-8") as file:
            current = file.read()
    except FileNotFoundError:
        current = TITLE
    pattern = re.compile(f"<!-- {re.escape(name)} -->\n.*?<!-- /{re.escape(name)} -->\n", re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current)
    else:
        updated = current.rstrip("\n") + "\n\n" + block
    with open(PATH, "w", encoding="utf-8") as file:
        file.write(updated)
