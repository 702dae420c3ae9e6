"""Install, update and remove user extensions with ``git`` (and their declared requirements with ``pip``).

Everything a user types (URL, branch, folder) is checked here before any process starts, and processes are run
without a shell with ``--`` before the URL, so nothing typed can become a git or pip option. An install clones
into a hidden temp folder inside ``extensions/`` (the loader skips dot-folders) and is moved into place only once
its manifest (and requirements) are good: a failed install leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement

from webui.errors import InvalidRequest, StudioError
from webui.extensions.manifest import Manifest, ManifestError, read_manifest

TEMP_PREFIX = ".tmp-"
FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*")
URL_PATH = re.compile(r"/[A-Za-z0-9._~/+%-]+")
PERCENT_CONTROL = re.compile(r"%(?:[01][0-9a-fA-F]|7[fF]|2[fF]|2[eE])")  # encoded controls, '/' and '.'
BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}")


class InstallFailed(StudioError):
    """git or pip failed; the message says which step and quotes its error. Nothing was left on disk."""


@dataclass(frozen=True)
class InstallRequest:
    url: str
    branch: str = ""                 # "" = the repository's default branch
    folder: str = ""                 # "" = the URL's last part without ".git", as A1111 names it
    install_requirements: bool = False


@dataclass(frozen=True)
class RequirementsPlan:
    lines: tuple[str, ...] = ()      # the manifest's requirement lines
    would_install: tuple[str, ...] = ()  # "name==version" pip would install (already satisfied ones left out)
    note: str = ""                   # why would_install could not be worked out (pip offline...), "" otherwise


@dataclass(frozen=True)
class InstallPlan:
    folder: str
    manifest: Manifest
    requirements: RequirementsPlan


@dataclass(frozen=True)
class Installed:
    folder: str
    path: Path
    manifest: Manifest
    requirements_installed: tuple[str, ...] = ()
    requirements_skipped: tuple[str, ...] = ()  # declared but not installed (install_requirements was off)


@dataclass(frozen=True)
class Updates:
    folder: str
    commits: tuple[str, ...] = field(default_factory=tuple)  # "abc1234 message", newest first


# ---- checks of what the user typed

def check_url(url: str) -> str:
    """``url`` if it is a plain ``https://host/path`` git URL; InvalidRequest naming ``url`` otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest("url", "give the extension's https git URL")
    url = url.strip()
    if any(ord(c) < 33 or ord(c) > 126 for c in url):
        raise InvalidRequest("url", "must not contain spaces, control or non-ASCII characters")
    if url.startswith("-"):
        raise InvalidRequest("url", "must not start with '-' (it would be read as a git option)")
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not url.lower().startswith("https://"):
        raise InvalidRequest("url", "only https:// git URLs are accepted (not file://, ssh, ext:: or host:path)")
    if "@" in parts.netloc:
        raise InvalidRequest("url", "must not carry a user name or password")
    try:
        port = parts.port
    except ValueError:
        raise InvalidRequest("url", "has a port that is not a number") from None
    host = parts.hostname or ""
    if not HOST.fullmatch(host) or (port is not None and not 0 < port < 65536):
        raise InvalidRequest("url", "does not name a valid host")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise InvalidRequest("url", "must not have a query or fragment")
    if not URL_PATH.fullmatch(parts.path) or parts.path.strip("/") == "" or PERCENT_CONTROL.search(parts.path) \
            or any(seg in (".", "..") for seg in parts.path.split("/")):
        raise InvalidRequest("url", "must be https://host/path/to/repository with a plain path")
    return url


def check_branch(branch: str) -> str:
    branch = (branch or "").strip()
    if branch and (not BRANCH.fullmatch(branch) or ".." in branch or "@{" in branch or branch.endswith((".lock", "/"))
                   or "//" in branch):
        raise InvalidRequest("branch", "must be a plain branch name (letters, digits, '.', '_', '-', '/'; not "
                                       "starting with '-', no '..' or spaces)")
    return branch


def check_folder(folder: str) -> str:
    if not FOLDER.fullmatch(folder or "") or folder.endswith(".") or ".." in folder:
        raise InvalidRequest("folder", "must be a plain folder name (letters, digits, '.', '_', '-'; not starting "
                                       "with '.' or '-', no '/', '\\' or '..')")
    return folder


def folder_from_url(url: str) -> str:
    """A1111's default folder name: the URL's last part without ``.git``."""
    last = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return last[:-4] if last.lower().endswith(".git") else last


def check_requirements(lines: tuple[str, ...]) -> tuple[str, ...]:
    """Each line a plain PEP 508 requirement (no pip options, no URLs); InvalidRequest naming the line."""
    for line in lines:
        if line.startswith("-"):
            raise InvalidRequest("requirements", f"'{line}' is a pip option, not a requirement")
        try:
            parsed = Requirement(line)
        except InvalidRequirement as exc:
            raise InvalidRequest("requirements", f"'{line}' is not a valid requirement ({exc})") from None
        if parsed.url:
            raise InvalidRequest("requirements", f"'{line}' is a direct URL; only package names from the index "
                                                 "are installed")
    return lines


# ---- running git and pip

class Installer:
    """Clones, updates and removes extensions in ``root`` (the user's ``extensions/``)."""

    def __init__(self, root: Path, *, git: str = "git", python: str = sys.executable,
                 git_seconds: float = 300.0, pip_seconds: float = 1800.0):
        self.root = root
        self._git = git
        self._python = python
        self._git_seconds = git_seconds
        self._pip_seconds = pip_seconds

    # -- install

    def check(self, request: InstallRequest, taken: set[str] = frozenset()) -> InstallPlan:
        """Clone into a temp folder, read the manifest and what pip would install, and remove the clone again:
        what the UI shows before "Install". ``taken`` are extension names already in use."""
        url, branch, folder = self._checked(request)
        temp = self._clone(url, branch)
        try:
            manifest = self._manifest(temp, taken)
            return InstallPlan(folder, manifest, self.plan(temp))
        finally:
            _remove_tree(temp)

    def install(self, request: InstallRequest, taken: set[str] = frozenset()) -> Installed:
        url, branch, folder = self._checked(request)
        temp = self._clone(url, branch)
        try:
            manifest = self._manifest(temp, taken)
            installed: tuple[str, ...] = ()
            if manifest.requirements and request.install_requirements:
                self._pip(["install", "--", *manifest.requirements], "installing requirements")
                installed = manifest.requirements
            target = self.root / folder
            if target.exists() or target.is_symlink():
                raise InvalidRequest("folder", f"extensions/{folder} already exists")
            try:
                os.rename(temp, target)
            except OSError as exc:
                raise InstallFailed(f"cannot move the clone into extensions/{folder}: {exc.strerror or exc}") from None
        except BaseException:
            _remove_tree(temp)
            raise
        skipped = () if request.install_requirements else manifest.requirements
        return Installed(folder, target, manifest, installed, skipped)

    def plan(self, folder: Path) -> RequirementsPlan:
        """The manifest's requirement lines in ``folder`` and what ``pip install`` would add for them."""
        lines = check_requirements(read_manifest(folder).requirements)
        if not lines:
            return RequirementsPlan()
        try:
            report = self._pip(["install", "--dry-run", "--quiet", "--report", "-", "--", *lines], "checking")
        except InstallFailed as exc:
            return RequirementsPlan(lines, (), f"pip could not work out what it would install: {exc}")
        import json
        try:
            items = json.loads(report).get("install", [])
            names = tuple(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)
        except (ValueError, KeyError, TypeError, AttributeError):
            return RequirementsPlan(lines, (), "pip's report could not be read")
        return RequirementsPlan(lines, names, "")

    # -- update

    def updates(self, folder: str) -> Updates:
        """``git fetch``, then the commits the upstream branch has that the extension does not."""
        path = self._existing(folder)
        self._run_git(["fetch", "--quiet"], path, "git fetch")
        return Updates(folder, self._pending(path))

    def update(self, folder: str) -> Updates:
        """Fetch and fast-forward; the commits that came in."""
        path = self._existing(folder)
        self._run_git(["fetch", "--quiet"], path, "git fetch")
        commits = self._pending(path)
        if commits:
            self._run_git(["merge", "--ff-only", "--quiet", "@{u}"], path, "git merge --ff-only")
        return Updates(folder, commits)

    # -- remove

    def remove(self, folder: str) -> None:
        """Delete ``extensions/<folder>``: moved aside first (so the loader never sees half of it), then deleted;
        a symbolic link is unlinked, never followed."""
        check_folder(folder)
        path = self.root / folder
        if path.is_symlink():
            path.unlink()
            return
        if not path.is_dir():
            raise InvalidRequest("name", f"extensions/{folder} is not installed")
        aside = self.root / f"{TEMP_PREFIX}remove-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, aside)
        except OSError as exc:
            raise InstallFailed(f"cannot remove extensions/{folder}: {exc.strerror or exc}") from None
        _remove_tree(aside)

    def sweep(self) -> None:
        """Remove temp folders a killed install or removal left behind."""
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.name.startswith(TEMP_PREFIX):
                    _remove_tree(child)

    # -- helpers

    def _checked(self, request: InstallRequest) -> tuple[str, str, str]:
        url = check_url(request.url)
        branch = check_branch(request.branch)
        folder = check_folder((request.folder or "").strip() or folder_from_url(url))
        target = self.root / folder
        if target.exists() or target.is_symlink():
            raise InvalidRequest("folder", f"extensions/{folder} already exists (remove it first, or choose "
                                           "another folder name)")
        return url, branch, folder

    def _clone(self, url: str, branch: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f"{TEMP_PREFIX}install-{uuid.uuid4().hex[:8]}"
        args = ["clone", "--depth", "1", "--quiet"] + (["--branch", branch] if branch else []) + ["--", url, str(temp)]
        try:
            self._run_git(args, self.root, "git clone")
        except InstallFailed as exc:
            _remove_tree(temp)
            if branch and "branch" in str(exc).lower():
                raise InvalidRequest("branch", f"'{branch}' was not found: {exc}") from None
            raise InvalidRequest("url", f"cannot be cloned: {exc}") from None
        return temp

    def _manifest(self, folder: Path, taken: set[str]) -> Manifest:
        try:
            manifest = read_manifest(folder)
            check_requirements(manifest.requirements)
        except ManifestError as exc:
            raise InvalidRequest("url", f"not a Stable Studio extension: {exc}") from None
        if manifest.name in taken:
            raise InvalidRequest("url", f"an extension named '{manifest.name}' is already installed")
        return manifest

    def _existing(self, folder: str) -> Path:
        check_folder(folder)
        path = self.root / folder
        if path.is_symlink() or not (path / ".git").exists():
            raise InvalidRequest("name", f"extensions/{folder} was not installed with git; it cannot be updated")
        return path

    def _pending(self, path: Path) -> tuple[str, ...]:
        out = self._run_git(["log", "--oneline", "--no-decorate", "HEAD..@{u}"], path, "git log")
        return tuple(line for line in out.splitlines() if line.strip())

    def _run_git(self, args: list[str], cwd: Path, what: str) -> str:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
               "LC_ALL": "C"}  # never ask for a password; English messages to quote
        return _run([self._git, "-c", "protocol.ext.allow=never", *args], cwd, env, self._git_seconds, what)

    def _pip(self, args: list[str], what: str) -> str:
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        return _run([self._python, "-m", "pip", *args], self.root, env, self._pip_seconds, f"pip ({what})")


def _run(argv: list[str], cwd: Path, env: dict[str, str], seconds: float, what: str) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=seconds,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise InstallFailed(f"{what} took longer than {seconds:.0f} s and was stopped") from None
    except OSError as exc:
        raise InstallFailed(f"{what} could not run: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise InstallFailed(f"{what} failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
    return done.stdout


def _remove_tree(path: Path) -> None:
    # rmtree unlinks symbolic links inside instead of following them (and refuses to start at one).
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
