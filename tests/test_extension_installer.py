"""The extension installer: git clone/update/remove from a local bare repository behind an https URL rewrite,
cleanup after every failure, and every refused URL, branch and folder name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.extension_repos import BASE_URL, WORKING, make_repo, manifest, push_commit, write_gitconfig
from webui.errors import InvalidRequest
from webui.extensions.installer import InstallRequest, Installer, check_requirements


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repos") / "bare"
    make_repo(root, "hello", {"extension.toml": manifest("hello"), "main.py": WORKING})
    make_repo(root, "noman", {"main.py": WORKING})
    make_repo(root, "needs", {"extension.toml": manifest("needs", requirements=("packaging>=20",)),
                              "main.py": WORKING})
    make_repo(root, "badreq", {"extension.toml": manifest("badreq", requirements=("--index-url=https://evil",)),
                               "main.py": WORKING})
    return root


@pytest.fixture
def installer(tmp_path, repos, monkeypatch) -> Installer:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(write_gitconfig(tmp_path / "gitconfig", repos)))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    root = tmp_path / "extensions"
    root.mkdir()
    return Installer(root, git_seconds=60, pip_seconds=120)


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_install_then_update_shows_and_pulls_new_commits_then_remove(installer, repos, tmp_path):
    done = installer.install(InstallRequest(BASE_URL + "hello.git"))
    assert done.folder == "hello" and done.manifest.name == "hello"
    assert (installer.root / "hello" / "main.py").read_text() == WORKING
    assert entries(installer.root) == ["hello"]  # no temp folder left

    assert installer.updates("hello").commits == ()
    work = repos.parent / "work-hello"
    push_commit(work, "main.py", WORKING + "# v2\n", "second version: a comment")
    pending = installer.updates("hello").commits
    assert len(pending) == 1 and pending[0].endswith("second version: a comment")
    assert "# v2" not in (installer.root / "hello" / "main.py").read_text()  # checking does not pull

    assert installer.update("hello").commits == pending
    assert (installer.root / "hello" / "main.py").read_text().endswith("# v2\n")
    assert installer.updates("hello").commits == ()

    installer.remove("hello")
    assert entries(installer.root) == []


def test_install_into_a_chosen_folder_and_branch(installer):
    done = installer.install(InstallRequest(BASE_URL + "hello.git", branch="main", folder="my-hello"))
    assert done.path == installer.root / "my-hello" and (done.path / "extension.toml").is_file()


def test_existing_folder_and_taken_name_are_refused(installer):
    installer.install(InstallRequest(BASE_URL + "hello.git"))
    with pytest.raises(InvalidRequest, match="folder: extensions/hello already exists"):
        installer.install(InstallRequest(BASE_URL + "hello.git"))
    with pytest.raises(InvalidRequest, match="named 'hello' is already installed"):
        installer.install(InstallRequest(BASE_URL + "hello.git", folder="again"), taken={"hello"})
    assert entries(installer.root) == ["hello"]


@pytest.mark.parametrize("url, branch, field, message", [
    ("noman.git", "", "url", "no extension.toml"),
    ("hello.git", "no-such-branch", "branch", "'no-such-branch' was not found"),
    ("missing.git", "", "url", "cannot be cloned"),
    ("badreq.git", "", "requirements", "is a pip option"),
])
def test_failed_install_leaves_nothing_behind(installer, url, branch, field, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        installer.install(InstallRequest(BASE_URL + url, branch=branch))
    assert caught.value.field == field
    assert entries(installer.root) == []


def test_check_shows_manifest_and_requirements_without_installing(installer):
    plan = installer.check(InstallRequest(BASE_URL + "needs.git"))
    assert plan.folder == "needs" and plan.manifest.version == "1.0.0"
    assert plan.requirements.lines == ("packaging>=20",)
    assert plan.requirements.would_install == ()  # already in this venv: pip would add nothing
    assert plan.requirements.note == ""
    assert entries(installer.root) == []


def test_install_with_requirements_runs_pip_and_without_says_skipped(installer):
    done = installer.install(InstallRequest(BASE_URL + "needs.git", install_requirements=True))
    assert done.requirements_installed == ("packaging>=20",) and done.requirements_skipped == ()
    installer.remove("needs")
    done = installer.install(InstallRequest(BASE_URL + "needs.git"))
    assert done.requirements_skipped == ("packaging>=20",)


@pytest.mark.parametrize("url", [
    "file:///etc", "ext::sh -c touch% /tmp/pwned", "ssh://example.test/x.git", "git@example.test:x.git",
    "example.test:x.git", "-uhttps://example.test/x.git", "--upload-pack=touch /tmp/pwned",
    "https://example.test/x.git --upload-pack=evil", "https://user:pw@example.test/x.git",
    "https://token@example.test/x.git", "https://example.test/x\n.git", "https://example.test/x\t.git",
    "http://example.test/x.git", "https://example.test/", "https://exa_mple.test/x.git",
    "https://example.test/a/../b.git", "https://example.test/x.git?a=1", "https://example.test/%0a.git",
    "HTTPS:/example.test/x.git", "https://example.test:99999/x.git", "",
])
def test_refused_urls(installer, url):
    with pytest.raises(InvalidRequest) as caught:
        installer.install(InstallRequest(url))
    assert caught.value.field == "url"
    assert entries(installer.root) == []


@pytest.mark.parametrize("branch", ["-b", "--upload-pack=x", "a..b", "a b", "a\nb", "x@{1}", "x.lock"])
def test_refused_branches(installer, branch):
    with pytest.raises(InvalidRequest) as caught:
        installer.install(InstallRequest(BASE_URL + "hello.git", branch=branch))
    assert caught.value.field == "branch"


@pytest.mark.parametrize("folder", ["..", "../x", "a/b", "a\\b", ".hidden", "-x", "x..y", "a\x00b", "a b", "."])
def test_refused_folders(installer, folder):
    with pytest.raises(InvalidRequest) as caught:
        installer.install(InstallRequest(BASE_URL + "hello.git", folder=folder))
    assert caught.value.field == "folder"
    assert entries(installer.root) == []


def test_remove_never_follows_a_symlink_out(installer, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (installer.root / "linked").symlink_to(outside)
    installer.remove("linked")
    assert (outside / "keep.txt").read_text() == "keep"
    assert entries(installer.root) == []
    with pytest.raises(InvalidRequest, match="not installed"):
        installer.remove("linked")
    with pytest.raises(InvalidRequest):
        installer.remove("..")


def test_sweep_removes_temp_folders_of_a_killed_install(installer):
    (installer.root / ".tmp-install-dead").mkdir()
    (installer.root / ".tmp-install-dead" / "f").write_text("x")
    installer.sweep()
    assert entries(installer.root) == []


@pytest.mark.parametrize("line, message", [
    ("-e .", "pip option"), ("pkg @ https://x/y.whl", "direct URL"), ("not a requirement!", "not a valid"),
])
def test_requirement_lines_refused_by_name(line, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        check_requirements((line,))
    assert caught.value.field == "requirements" and line in str(caught.value)


def test_a_failed_pip_install_leaves_nothing_behind(installer, repos, monkeypatch):
    from webui.extensions.installer import InstallFailed

    make_repo(repos, "pipfail", {"extension.toml": manifest("pipfail", requirements=("surely-no-such-pkg-xq==1.0",)),
                                 "main.py": WORKING})
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip fails at once instead of retrying
    plan = installer.check(InstallRequest(BASE_URL + "pipfail.git"))
    assert plan.requirements.lines == ("surely-no-such-pkg-xq==1.0",) and plan.requirements.would_install == ()
    assert plan.requirements.note.startswith("pip could not work out what it would install")
    with pytest.raises(InstallFailed, match="pip \\(installing requirements\\) failed"):
        installer.install(InstallRequest(BASE_URL + "pipfail.git", install_requirements=True))
    assert entries(installer.root) == []
