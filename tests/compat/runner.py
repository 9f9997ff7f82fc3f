"""Runs Lightning-style programs written with `lightning` imports, as written or with only their import prefixes
rewritten to fabric_kit / loops, one process for many programs (start-up is most of a small program's time):

    python -m tests.compat.runner lightning programs/fabric_loop.py programs/trainer_boring.py
    python -m tests.compat.runner ours programs/fabric_loop.py programs/trainer_boring.py

Each program prints its results on lines starting with `@@ `; the runner prints `### <program>` before them, and
`### <program> FAILED` with the traceback when one raises, then goes on with the next."""
from __future__ import annotations

import contextlib
import io
import re
import sys
import traceback
from pathlib import Path

IMPORT_LINE = re.compile(r"^[ \t]*(?:from|import)[ \t].*$", re.MULTILINE)
# Most specific first; `\b` keeps `lightning_utilities` (not Lightning's to rename) as it is.
RENAMES = ((re.compile(r"\blightning\.fabric\b"), "fabric_kit"), (re.compile(r"\blightning\.pytorch\b"), "loops"),
           (re.compile(r"\blightning_fabric\b"), "fabric_kit"), (re.compile(r"\bpytorch_lightning\b"), "loops"),
           (re.compile(r"\blightning\b"), "loops"))
MARK = "@@ "


def rewrite(source: str) -> str:
    """`source` with the module paths of its import statements moved from Lightning to fabric_kit / loops; nothing
    else changes, as a user converting a script would do."""

    def rename(line: re.Match[str]) -> str:
        text = line.group(0)
        for pattern, replacement in RENAMES:
            text = pattern.sub(replacement, text)
        return text

    return IMPORT_LINE.sub(rename, source)


def run(flavour: str, path: Path) -> str:
    source = path.read_text()
    if flavour == "ours":
        source = rewrite(source)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        exec(compile(source, str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})  # noqa: S102
    return "".join(line + "\n" for line in captured.getvalue().splitlines() if line.startswith(MARK))


def main(argv: list[str]) -> None:
    flavour, *programs = argv
    if flavour not in ("lightning", "ours"):
        raise SystemExit(f"flavour {flavour!r}: pass 'lightning' or 'ours'")
    for program in map(Path, programs):
        try:
            results = run(flavour, program)
        except Exception:  # noqa: BLE001 - reported, and the next program still runs
            print(f"### {program.stem} FAILED\n{traceback.format_exc()}", flush=True)
            continue
        print(f"### {program.stem}\n{results}", end="", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
