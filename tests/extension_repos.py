"""Local git repositories of test extensions, reached through ``https://example.test/<name>.git`` by a git config
``url.<folder>.insteadOf`` rewrite (so no network is used and the product still only accepts https URLs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BASE_URL = "https://example.test/"
ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.test", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@example.test", "GIT_CONFIG_NOSYSTEM": "1"}

WORKING = """\
from webui.extensions.api import Extension


def setup(ext: Extension) -> None:
    ext.context.log.info("hello from %s", ext.name)
"""

FAILING = """\
raise RuntimeError("this extension is broken on purpose")
"""


def manifest(name: str, version: str = "1.0.0", requirements: tuple[str, ...] = (), api: str = ">=1.0,<2") -> str:
    reqs = ", ".join(f'"{r}"' for r in requirements)
    return (f'name = "{name}"\nversion = "{version}"\napi = "{api}"\nrequirements = [{reqs}]\n'
            f'description = "test extension {name}"\n')


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **ENV}).stdout


def write_gitconfig(path: Path, repos: Path) -> Path:
    """A global git config rewriting BASE_URL to the folder holding the bare repositories."""
    path.write_text(f'[url "{repos.as_posix()}/"]\n\tinsteadOf = {BASE_URL}\n'
                    "[init]\n\tdefaultBranch = main\n", encoding="utf-8")
    return path


def make_repo(repos: Path, name: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A bare repository ``repos/<name>.git`` with one commit of ``files``, and its working clone."""
    repos.mkdir(parents=True, exist_ok=True)
    work = repos.parent / f"work-{name}"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    for rel, text in files.items():
        (work / rel).write_text(text, encoding="utf-8")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first version", cwd=work)
    bare = repos / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=repos)
    git("remote", "add", "origin", str(bare), cwd=work)
    git("fetch", "-q", "origin", cwd=work)
    git("branch", "-q", "--set-upstream-to=origin/main", "main", cwd=work)
    return bare, work


def push_commit(work: Path, rel: str, text: str, message: str) -> None:
    (work / rel).write_text(text, encoding="utf-8")
    git("commit", "-q", "-am", message, cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
