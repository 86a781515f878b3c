"""Figures the docs include, written by the benchmark script that measured them (never retyped).

A script wraps what it prints in :func:`docs_figure`; with ``--docs`` the printed text also goes to
``docs/figures/<name>.md`` under a line naming the command, the date and the machine, and the docs
pages include that file (``--8<-- "figures/<name>.md"``)::

    with docs_figure("shard_mix", args.docs, markdown=True):
        print("| layout | ... |")
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

DOCS_FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def machine() -> str:
    """The machine a figure was measured on, e.g. ``"2 CPU cores, x86_64, torch 2.13.0 (CPU)"``."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__.split('+')[0]} ({device})"


def command() -> str:
    """This process's command line as a user types it: ``python benchmarks/<script>.py [args]``."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(DOCS_FIGURES.parents[1])
    except ValueError:
        pass
    return shlex.join(["python", str(script), *(a for a in sys.argv[1:] if a != "--docs")])


def provenance() -> str:
    """One Markdown line: which command wrote the figure, when, on what machine."""
    return f"Written by `{command()}` on {time.strftime('%Y-%m-%d')}, {machine()}."


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def docs_figure(name: str, write: bool, markdown: bool = False, out: Path = DOCS_FIGURES) -> Iterator[None]:
    """Print as usual; when ``write``, also save what was printed as ``out/<name>.md``.

    ``markdown``: the printed text is Markdown (a table) and goes in as it is; otherwise it goes in
    a ``text`` code block. The file is written only when the block finishes without an error, so a
    failed run never replaces a figure.
    """
    if not write:
        yield
        return
    captured = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, captured)):
        yield
    body = captured.getvalue().rstrip("\n")
    if not markdown:
        body = f"```text\n{body}\n```"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.md"
    path.write_text(f"<!-- written by {command().split()[1]}: do not edit, re-run it with --docs -->\n\n"
                    f"{provenance()}\n\n{body}\n")
    print(f"figure -> {path}", file=sys.stderr)
