"""nox sessions: ``nox -s tests`` runs the suite, ``nox -s lint`` checks style and types."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[all]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "tools", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "tools", "benchmarks", "noxfile.py")
    # mypy over src/ (pyproject.toml's [tool.mypy]: the optional extras are Any to it).
    session.install("-e", ".[dev]")
    session.run("mypy")
