"""Model folders as an attacker or an unlucky user fills them: devices, FIFOs, symlinks out, files changing while
hashed, huge sparse files; and the default checkpoint after a restart.

Scans run in a thread joined with a timeout: that is a guard so a regression fails the test instead of hanging
the run, not a timing assert.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import install, make_settings
from webui.api.sdapi import build_router, install_error_handlers
from webui.cli import build_parser, parse_settings
from webui.errors import ModelNotFound
from webui.models.gan import GanRegistry
from webui.models.loras import LoraRegistry, scan_embeddings
from webui.models.manager import ModelManager
from webui.models.registry import HashCache, ModelRegistry
from webui.models.safetensors_file import FileChanged, HashCancelled, NotRegularFile, hash_file, sha256_file
from webui.services.container import build_services
from webui.services.listings import list_vaes

GUARD_S = 120  # generous: the VM stalls; only a real hang gets near it
GiB = 1024**3


def guarded(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a daemon thread; fail (not hang) if it never returns; re-raise what it raised."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    assert not thread.is_alive(), "the scan did not finish: it is reading something endless"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def ckpt_dir(data_dir: Path) -> Path:
    return data_dir / "models" / "Stable-diffusion"


def write(path: Path, data: bytes = b"model bytes " * 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no disk space (created instantly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb"):
        pass
    os.truncate(path, size)
    return path


# ------------------------------------------------------------------ every scanner: what may be listed at all

def _checkpoints(folder: Path, allow: bool) -> list[str]:
    registry = ModelRegistry(folder, HashCache(folder.parent / "cache.json"), allow_external_links=allow)
    return [i.name for i in registry.refresh()]


def _rel(paths, folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in paths)


SCANNERS: dict[str, tuple[str, Callable[[Path, bool], list[str]]]] = {
    "checkpoints": (".safetensors", _checkpoints),
    "lora": (".safetensors", lambda d, allow: _rel(
        (i.path for i in LoraRegistry(d, allow_external_links=allow).refresh()), d)),
    "vae": (".pt", lambda d, allow: _rel(list_vaes(d, allow_external_links=allow), d)),
    "embeddings": (".pt", lambda d, allow: _rel(
        (e.path for e in scan_embeddings(d, allow_external_links=allow)), d)),
}


@pytest.mark.parametrize("kind", SCANNERS)
@pytest.mark.parametrize("allow", [False, True], ids=["default", "external-links-allowed"])
def test_devices_fifos_and_folders_with_a_model_name_are_skipped(tmp_path, kind, allow):
    ext, scan = SCANNERS[kind]
    folder = tmp_path / "models" / kind
    write(folder / f"good{ext}")
    (folder / f"zero{ext}").symlink_to("/dev/zero")  # read forever before the fix
    os.mkfifo(folder / f"fifo{ext}")  # open() blocks forever without a writer
    (folder / f"folder{ext}").mkdir()
    (folder / "sub").mkdir()
    os.mkfifo(folder / "sub" / f"nested-fifo{ext}")
    # Even with external links allowed, a device is not a model.
    assert guarded(lambda: scan(folder, allow)) == [f"good{ext}"]


def test_checkpoint_registry_says_why_an_entry_was_skipped(tmp_path, caplog):
    folder = ckpt_dir(tmp_path)
    write(folder / "good.safetensors")
    (folder / "zero.safetensors").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.safetensors")
    write(folder / "empty.safetensors", b"")
    write(folder / "stub.safetensors", b"1234")
    (folder / "dangling.safetensors").symlink_to(folder / "gone.safetensors")
    registry = ModelRegistry(folder, HashCache(tmp_path / "cache.json"), allow_external_links=True)
    with caplog.at_level(logging.WARNING):
        assert [i.name for i in guarded(registry.refresh)] == ["good.safetensors"]
    reasons = dict(registry.skipped())
    assert reasons["zero.safetensors"] == "a device, not a regular file"
    assert reasons["fifo.safetensors"] == "a FIFO, not a regular file"
    assert reasons["empty.safetensors"] == "only 0 bytes: too small to be a model"
    assert reasons["stub.safetensors"] == "only 4 bytes: too small to be a model"
    assert reasons["dangling.safetensors"] == "a broken symbolic link"
    assert f"Skipped {folder / 'fifo.safetensors'}: a FIFO" in caplog.text
    # Asked for by name, it says why instead of a bare "not found".
    with pytest.raises(ModelNotFound, match=r"'fifo' not found \(fifo.safetensors is in the folder but was "
                                            r"skipped: a FIFO, not a regular file\)"):
        registry.find("fifo")


def test_absurdly_large_file_is_skipped_from_its_size_without_reading(tmp_path):
    folder = ckpt_dir(tmp_path)
    write(folder / "good.safetensors")
    sparse(folder / "huge.safetensors", 300 * GiB)  # hashing it would take many minutes
    registry = ModelRegistry(folder, HashCache(tmp_path / "cache.json"))
    assert [i.name for i in guarded(registry.refresh)] == ["good.safetensors"]
    assert "larger than any model" in dict(registry.skipped())["huge.safetensors"]


def test_style_transfer_registry_skips_devices_and_fifos(tmp_path):
    models = tmp_path / "models"
    write(models / "CycleGAN" / "good.pth")
    (models / "CycleGAN" / "zero.pth").symlink_to("/dev/zero")
    (models / "pix2pix").mkdir()
    os.mkfifo(models / "pix2pix" / "fifo.pth")
    (models / "pix2pix" / "release").mkdir()
    os.mkfifo(models / "pix2pix" / "release" / "latest_net_G.pth")
    (models / "CycleGAN" / "release").mkdir()
    (models / "CycleGAN" / "release" / "latest_net_G.pth").symlink_to("/dev/zero")
    for allow in (False, True):
        registry = GanRegistry(models, HashCache(tmp_path / "cache.json"), allow_external_links=allow)
        assert [i.key for i in guarded(registry.refresh)] == ["CycleGAN/good"]


# ------------------------------------------------------------------------------------------------- symlinks

@pytest.mark.parametrize("kind", SCANNERS)
def test_links_leaving_the_folder_are_refused_unless_allowed(tmp_path, kind, caplog):
    ext, scan = SCANNERS[kind]
    folder = tmp_path / "models" / kind
    outside = tmp_path / "elsewhere"
    write(folder / f"local{ext}")
    write(outside / f"file{ext}")
    write(outside / "disk" / f"deep{ext}")
    (folder / f"linked{ext}").symlink_to(outside / f"file{ext}")
    (folder / "other-disk").symlink_to(outside / "disk", target_is_directory=True)
    (folder / "root").symlink_to("/", target_is_directory=True)  # a whole file system to walk
    with caplog.at_level(logging.WARNING):
        assert guarded(lambda: scan(folder, False)) == [f"local{ext}"]
    assert f"Skipped {folder / f'linked{ext}'}: symbolic link to {outside / f'file{ext}'}, outside" in caplog.text
    assert f"Skipped {folder / 'other-disk'}: symbolic link to {outside / 'disk'}" in caplog.text

    (folder / "root").unlink()
    assert guarded(lambda: scan(folder, True)) == sorted([f"linked{ext}", f"local{ext}", f"other-disk/deep{ext}"])


@pytest.mark.parametrize("kind", SCANNERS)
def test_links_inside_the_folder_work_and_loops_end(tmp_path, kind):
    ext, scan = SCANNERS[kind]
    folder = tmp_path / "models" / kind
    write(folder / "sub" / f"real{ext}")
    (folder / f"alias{ext}").symlink_to(Path("sub") / f"real{ext}")  # relative link, stays inside
    (folder / "again").symlink_to("sub", target_is_directory=True)  # the same folder twice: listed once
    (folder / "sub" / "loop").symlink_to("..", target_is_directory=True)  # back to the root
    assert guarded(lambda: scan(folder, False)) == [f"alias{ext}", f"sub/real{ext}"]


def test_the_folder_itself_may_be_a_link(tmp_path):
    disk = tmp_path / "big-disk" / "sd"
    real = write(disk / "v1-5.safetensors")
    (disk / "alias.safetensors").symlink_to(real)  # inside the folder's real location
    ckpt_dir(tmp_path).parent.mkdir(parents=True)
    ckpt_dir(tmp_path).symlink_to(disk, target_is_directory=True)
    assert _checkpoints(ckpt_dir(tmp_path), False) == ["alias.safetensors", "v1-5.safetensors"]


def test_checkpoint_linked_inside_has_the_targets_hash(tmp_path):
    folder = ckpt_dir(tmp_path)
    real = write(folder / "sub" / "real.safetensors")
    (folder / "alias.safetensors").symlink_to(real)
    items = {i.name: i for i in ModelRegistry(folder, HashCache(tmp_path / "cache.json")).refresh()}
    assert items["alias.safetensors"].sha256 == items["sub/real.safetensors"].sha256 == sha256_file(real)


def test_style_transfer_links_out_refused_unless_allowed(tmp_path):
    models = tmp_path / "models"
    outside = tmp_path / "elsewhere"
    write(outside / "monet.pth")
    write(outside / "release" / "latest_net_G.pth")
    (models / "CycleGAN").mkdir(parents=True)
    (models / "CycleGAN" / "monet.pth").symlink_to(outside / "monet.pth")
    (models / "CycleGAN" / "facades").symlink_to(outside / "release", target_is_directory=True)
    write(models / "pix2pix" / "maps" / "local.pth")
    (models / "pix2pix" / "maps" / "latest_net_G.pth").symlink_to(outside / "monet.pth")  # inside a release dir
    assert GanRegistry(models).refresh() == []
    allowed = GanRegistry(models, allow_external_links=True).refresh()
    assert [i.key for i in allowed] == ["CycleGAN/facades", "CycleGAN/monet", "pix2pix/maps"]


def test_the_flag_reaches_every_scanner_from_the_command_line(tmp_path, model_files, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "--allow-external-model-links" in capsys.readouterr().out
    data_dir = tmp_path / "data"
    outside = model_files["single"]  # lives in the session's model-files folder, not under data_dir
    ckpt_dir(data_dir).mkdir(parents=True)
    (ckpt_dir(data_dir) / "external.safetensors").symlink_to(outside)
    for flag, expected in (([], []), (["--allow-external-model-links"], ["external.safetensors"])):
        settings = parse_settings(["--data-dir", str(data_dir), "--device", "cpu", *flag])
        assert settings.allow_external_model_links == bool(flag)
        services = build_services(settings)
        try:
            assert [i.name for i in services.registry.list()] == expected
        finally:
            services.queue.shutdown()


# --------------------------------------------------------------------------------------- hashing: bounded

class Tampering(threading.Event):
    """A stop token that is never set but changes the file on its ``at``-th check: a real concurrent edit,
    placed deterministically between two chunks."""

    def __init__(self, action: Callable[[], None], at: int = 2):
        super().__init__()
        self.action, self.at, self.calls = action, at, 0

    def is_set(self) -> bool:
        self.calls += 1
        if self.calls == self.at:
            self.action()
        return super().is_set()


def _three_mib(path: Path) -> Path:
    return write(path, os.urandom(3 << 20))


@pytest.mark.parametrize("change", ["truncate", "append", "replace"])
def test_a_file_changed_while_hashing_is_refused(tmp_path, change):
    path = _three_mib(tmp_path / "model.safetensors")
    replacement = _three_mib(tmp_path / "new.safetensors")
    actions = {
        "truncate": lambda: os.truncate(path, 1 << 20),
        "append": lambda: path.open("ab").write(b"more"),
        "replace": lambda: os.replace(replacement, path),
    }
    with pytest.raises(FileChanged, match="model.safetensors .*(changed|replaced) while it was being hashed"):
        hash_file(path, stop=Tampering(actions[change]))


def test_registry_skips_a_checkpoint_changed_while_hashing_and_caches_nothing(tmp_path):
    folder = ckpt_dir(tmp_path)
    path = _three_mib(folder / "copying.safetensors")
    cache_file = tmp_path / "cache.json"
    tampering = Tampering(lambda: path.open("ab").write(os.urandom(1 << 20)))  # a copy still in progress
    registry = ModelRegistry(folder, HashCache(cache_file, stop=tampering))
    assert registry.refresh() == []
    assert "changed while it was being hashed" in dict(registry.skipped())["copying.safetensors"]
    assert not cache_file.exists()
    # Once the copy is done, a refresh lists it with the hash of the whole file.
    info = ModelRegistry(folder, HashCache(cache_file)).refresh()[0]
    assert info.sha256 == sha256_file(path)


def test_hashing_refuses_a_fifo_even_if_swapped_in_after_the_scan(tmp_path):
    fifo = tmp_path / "swapped.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile):
        guarded(lambda: hash_file(fifo))


# ----------------------------------------------------------------------------------- hashing: cancellable

class StopAfter(threading.Event):
    """Counts checks; reports "stop" from the ``n``-th on."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.calls = n, 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


def test_stop_token_stops_a_hash_between_chunks(tmp_path):
    big = sparse(tmp_path / "big.safetensors", 4 * GiB)
    token = StopAfter(3)
    with pytest.raises(HashCancelled, match="Hashing big.safetensors was stopped"):
        guarded(lambda: hash_file(big, stop=token))
    assert token.calls == 3  # two 1 MiB chunks of 4096 were read, then it stopped


class Watched(threading.Event):
    """A real Event that also tells the test when hashing has begun and how many chunks it checked."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()
        self.calls = 0

    def is_set(self) -> bool:
        self.calls += 1
        self.started.set()
        return super().is_set()


def test_closing_the_registry_stops_a_refresh_hashing_in_another_thread(tmp_path):
    folder = ckpt_dir(tmp_path)
    sparse(folder / "huge.safetensors", 64 * GiB)  # 65536 chunks: minutes of hashing
    stop = Watched()
    cache_file = tmp_path / "cache.json"
    registry = ModelRegistry(folder, HashCache(cache_file, stop=stop))
    box: dict[str, BaseException] = {}

    def refresh() -> None:
        try:
            registry.refresh()
        except BaseException as exc:  # noqa: BLE001 - checked below
            box["error"] = exc

    worker = threading.Thread(target=refresh, daemon=True)
    worker.start()
    assert stop.started.wait(GUARD_S)
    registry.close()  # what app.py does at shutdown
    worker.join(GUARD_S)
    assert not worker.is_alive()
    assert isinstance(box.get("error"), HashCancelled)
    assert stop.calls < 65536
    assert registry.list() == [] and not cache_file.exists()
    with pytest.raises(HashCancelled):  # closed for good
        registry.refresh()


# --------------------------------------------------------------------------- find() never leaves the list

TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "../cache.json", "sub/../../../etc/passwd",
              "..%2F..%2Fetc%2Fpasswd", "/proc/self/environ", "/dev/zero"]


def test_find_only_resolves_listed_checkpoints(data_dir, model_files, tmp_path):
    install(model_files["single"], data_dir)
    outside = write(tmp_path / "outside.safetensors")
    registry = ModelRegistry(ckpt_dir(data_dir), HashCache(data_dir / "cache.json"))
    registry.refresh()
    listed = registry.list()[0]
    for query in [*TRAVERSALS, str(outside), f"../../{outside.name}", str(listed.path),
                  str(listed.path.resolve()), f"{outside} [{listed.short_hash}]"]:
        with pytest.raises(ModelNotFound):
            registry.find(query)
    manager = ModelManager(make_settings(data_dir), registry)
    with pytest.raises(ModelNotFound):
        manager.select("../../etc/passwd")
    assert manager.loaded_titles() == []


def test_style_and_lora_find_only_resolve_listed_files(tmp_path):
    models = tmp_path / "models"
    write(models / "CycleGAN" / "horse2zebra.pth")
    write(models / "Lora" / "detail.safetensors")
    gan = GanRegistry(models)
    gan.refresh()
    loras = LoraRegistry(models / "Lora")
    for query in [*TRAVERSALS, str(models / "CycleGAN" / "horse2zebra.pth"), "CycleGAN/../Lora/detail"]:
        with pytest.raises(ModelNotFound):
            gan.find(query)
        assert loras.find(query) is None


def test_api_refuses_a_path_as_checkpoint_with_422(services):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(services))
    with TestClient(app) as client:
        for query in ("../../etc/passwd", "/etc/passwd"):
            response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": query})
            assert response.status_code == 422
            assert response.json()["error"].startswith(f"sd_model_checkpoint: Checkpoint '{query}' not found")
    assert services.manager.loaded_titles() == []


# ------------------------------------------------------------------------- the default after a restart

def test_last_used_checkpoint_is_the_default_after_a_restart(data_dir, model_files, tiny_loader):
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    first = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        assert first.manager.selected.name == "other-sd15.safetensors"  # alphabetically first
        first.manager.select("tiny-sd15")
    finally:
        first.queue.shutdown()
    saved = json.loads((data_dir / "last-checkpoint.json").read_text())
    assert saved["name"] == "tiny-sd15.safetensors"

    second = build_services(make_settings(data_dir), load=tiny_loader)  # a restart over the same data dir
    try:
        assert second.manager.selected.name == "tiny-sd15.safetensors"
        assert second.options.get_all()["sd_model_checkpoint"].startswith("tiny-sd15.safetensors [")
    finally:
        second.queue.shutdown()


def test_a_leased_default_is_remembered_but_a_per_request_override_is_not(data_dir, model_files, tiny_loader):
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    registry = ModelRegistry(ckpt_dir(data_dir), HashCache(data_dir / "cache.json"))
    registry.refresh()
    manager = ModelManager(make_settings(data_dir), registry, load=tiny_loader)
    with manager.lease() as model:
        assert model.info.name == "other-sd15.safetensors"
    with manager.lease("tiny-sd15"):
        pass
    restarted = ModelManager(make_settings(data_dir), registry)
    assert restarted.selected.name == "other-sd15.safetensors"
    assert json.loads((data_dir / "last-checkpoint.json").read_text())["name"] == "other-sd15.safetensors"


def test_default_skips_broken_and_inpainting_models(data_dir, model_files):
    folder = ckpt_dir(data_dir)
    write(folder / "a-broken.safetensors", model_files["single"].read_bytes()[:5000])
    install(model_files["inpaint"], data_dir)       # tiny-inpainting: txt2img would refuse it
    install(model_files["single"], data_dir)        # tiny-sd15
    registry = ModelRegistry(folder, HashCache(data_dir / "cache.json"))
    names = [i.name for i in registry.refresh()]
    assert names[:2] == ["a-broken.safetensors", "tiny-inpainting.safetensors"]
    manager = ModelManager(make_settings(data_dir), registry)
    assert manager.selected.name == "tiny-sd15.safetensors"

    # Only unusual models: the first is still offered, so the UI has something to show.
    (folder / "tiny-sd15.safetensors").unlink()
    registry.refresh()
    assert ModelManager(make_settings(data_dir), registry).selected.name == "a-broken.safetensors"


def test_a_remembered_checkpoint_that_is_gone_or_a_damaged_memory_falls_back(data_dir, model_files):
    install(model_files["inpaint"], data_dir)
    install(model_files["single"], data_dir)
    registry = ModelRegistry(ckpt_dir(data_dir), HashCache(data_dir / "cache.json"))
    registry.refresh()
    memory = data_dir / "last-checkpoint.json"
    for content in ('{"name": "deleted.safetensors"}', "{not json", '["a list"]', '{"name": 42}'):
        memory.write_text(content)
        assert ModelManager(make_settings(data_dir), registry).selected.name == "tiny-sd15.safetensors"


def test_failing_to_remember_never_fails_the_switch(data_dir, model_files, caplog, tiny_loader):
    install(model_files["single"], data_dir)
    registry = ModelRegistry(ckpt_dir(data_dir), HashCache(data_dir / "cache.json"))
    registry.refresh()
    (data_dir / "last-checkpoint.json").mkdir()  # the atomic rename onto it fails, as on a broken disk
    manager = ModelManager(make_settings(data_dir), registry, load=tiny_loader)
    with caplog.at_level(logging.WARNING):
        assert manager.select("tiny-sd15").name == "tiny-sd15.safetensors"
    assert "Could not remember the last checkpoint" in caplog.text
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".last-checkpoint")] == []  # no temp left
