"""Scale-out pieces that need no Ray cluster: how a replica gets a checkpoint by name and sha256, how the queue
sends generation to remote slots, and what travels between front and replica."""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from webui.errors import ModelLoadError
from webui.models.registry import HashCache, ModelRegistry
from webui.scaleout.messages import CheckpointRef, RemoteResult
from webui.scaleout.model_source import ModelSource
from webui.services.jobs import LONG, JobKind, JobQueue
from webui.types import GenerationResult, JobState, Txt2ImgRequest


def _ref(path: Path, name: str | None = None) -> CheckpointRef:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return CheckpointRef(name=name or path.name, title=f"{name or path.name} [{digest[:10]}]", sha256=digest,
                         size=path.stat().st_size)


class Front:
    """The front's side of a fetch: its files by sha256, read in chunks (the control actor does this over Ray)."""

    def __init__(self, *files: Path, chunk: int = 1 << 20, corrupt: bool = False):
        self.files = {hashlib.sha256(f.read_bytes()).hexdigest(): f for f in files}
        self.chunk, self.corrupt, self.reads = chunk, corrupt, 0

    def read(self, sha256: str, offset: int) -> bytes:
        if sha256 not in self.files:
            raise FileNotFoundError(f"the front offers no checkpoint with sha256 {sha256}")
        self.reads += 1
        with open(self.files[sha256], "rb") as handle:
            handle.seek(offset)
            data = handle.read(self.chunk)
        return bytes([data[0] ^ 1]) + data[1:] if self.corrupt and offset == 0 else data


@pytest.fixture
def replica(tmp_path):
    registry = ModelRegistry(tmp_path / "replica" / "models" / "Stable-diffusion",
                             HashCache(tmp_path / "replica" / "cache.json"), allow_external_links=True)
    registry.directory.mkdir(parents=True)
    shared = tmp_path / "shared" / "Stable-diffusion"
    shared.mkdir(parents=True)
    return registry, shared, tmp_path / "cache" / "checkpoints"


def test_a_matching_file_in_the_shared_folder_is_used_without_fetching(replica, model_files):
    registry, shared, cache = replica
    shutil.copy2(model_files["single"], shared / "tiny.safetensors")
    ref = _ref(model_files["single"], "tiny.safetensors")
    front = Front(model_files["single"])
    source = ModelSource(registry, shared.parent / "Stable-diffusion", cache, front.read)
    title = source.ensure(ref)
    assert title == ref.title and registry.find(title).sha256 == ref.sha256
    assert front.reads == 0 and source.fetched == [] and not cache.exists()
    assert (registry.directory / "tiny.safetensors").resolve() == (shared / "tiny.safetensors").resolve()


def test_without_a_shared_copy_the_file_is_fetched_once_verified_and_kept(replica, model_files):
    registry, _, cache = replica
    ref = _ref(model_files["other"], "sub/other.safetensors")  # a name in a subfolder
    front = Front(model_files["other"], chunk=64 * 1024)
    source = ModelSource(registry, None, cache, front.read)
    assert source.ensure(ref) == ref.title
    kept = cache / f"{ref.sha256}.safetensors"
    assert kept.read_bytes() == model_files["other"].read_bytes() and front.reads > 1  # came in several chunks
    reads = front.reads
    assert ModelSource(registry, None, cache, front.read).ensure(ref) == ref.title  # a later replica: no refetch
    assert front.reads == reads and source.fetched == [ref.sha256]
    assert not list(cache.glob(".*"))  # no partial files left


def test_a_shared_file_with_another_hash_is_never_used(replica, model_files):
    registry, shared, cache = replica
    wanted = _ref(model_files["single"], "sd.safetensors")
    changed = bytearray(model_files["single"].read_bytes())
    changed[-1] ^= 0xFF  # same name and size, different content
    (shared / "sd.safetensors").write_bytes(bytes(changed))
    front = Front(model_files["single"])
    source = ModelSource(registry, shared, cache, front.read)
    assert source.ensure(wanted) == wanted.title
    assert registry.find(wanted.title).sha256 == wanted.sha256  # the fetched copy, not the shared one
    assert source.fetched == [wanted.sha256]


def test_a_fetched_copy_whose_hash_differs_is_refused_and_removed(replica, model_files):
    registry, _, cache = replica
    ref = _ref(model_files["single"])
    source = ModelSource(registry, None, cache, Front(model_files["single"], corrupt=True).read)
    with pytest.raises(ModelLoadError, match=f"{re.escape(ref.title)}: the copy fetched from the front has sha256 "
                                             f"[0-9a-f]{{64}}, not {ref.sha256}; not used"):
        source.ensure(ref)
    assert list(cache.iterdir()) == [] and registry.list() == []


def test_a_file_the_front_does_not_offer_fails_naming_it(replica, model_files):
    registry, _, cache = replica
    ref = _ref(model_files["single"])
    with pytest.raises(ModelLoadError, match="could not fetch it from the front: the front offers no checkpoint"):
        ModelSource(registry, None, cache, Front().read).ensure(ref)


@pytest.mark.parametrize("name", ["../escape.safetensors", "/etc/x.safetensors", "a/../../b.safetensors"])
def test_names_that_leave_the_checkpoints_folder_are_refused(replica, model_files, name):
    registry, _, cache = replica
    ref = CheckpointRef(name=name, title=name, sha256="0" * 64, size=10)
    with pytest.raises(ModelLoadError, match="is not a path inside models/Stable-diffusion"):
        ModelSource(registry, None, cache, Front().read).ensure(ref)


def _wait(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the queue did not get there"
        time.sleep(0.01)


def test_generation_goes_to_remote_slots_and_everything_else_stays_here():
    queue = JobQueue(remote_slots=2)
    release = threading.Event()

    def hold(ctx, request):
        release.wait(30)
        return ctx.job_id

    queue.register(JobKind("txt2img", hold, uses_checkpoint=True))
    queue.register(JobKind("checkpoint-switch", hold, uses_checkpoint=True, switches_checkpoint=True))
    queue.register(JobKind("extras", hold))
    queue.register(JobKind("train", hold, pausable=True, priority=LONG))
    try:
        training = queue.submit("train")  # a long job holds this process's device...
        _wait(lambda: training.state is JobState.RUNNING)
        generations = [queue.submit("txt2img") for _ in range(3)]
        extras = queue.submit("extras")
        _wait(lambda: queue.in_flight_remote == 2)
        # ...and interactive generations run at the same time on the replicas' slots: never starved by it.
        assert training.state is JobState.RUNNING
        assert queue.position(generations[2]) == 1  # two slots: the third generation waits for one
        assert extras.state is JobState.QUEUED  # local work waits for this process's device
        release.set()
        for job in [training, *generations, extras]:
            job.wait(30)
        switch = queue.submit("checkpoint-switch")
        switch.wait(30)
        assert {job.device for job in generations} <= {"ray-1", "ray-2"}
        assert extras.device == training.device == switch.device == "cpu"  # a switch only sets the default, here
        assert queue.devices == ["cpu"]  # remote slots are not this process's devices
    finally:
        release.set()
        queue.shutdown()


def test_results_travel_as_lossless_pngs():
    image = Image.frombytes("RGB", (8, 4), bytes(range(96)))
    request = Txt2ImgRequest(prompt="x", width=64, height=64)
    result = GenerationResult(images=[image], seeds=[5], infotexts=["x\nSteps: 20"], request=request, base_seed=5,
                              subseeds=[9], model_name="tiny", model_hash="abc", warnings=["w"])
    back = RemoteResult.pack(result, "r1").unpack()
    assert back.images[0].tobytes() == image.tobytes() and back.replica == "r1"
    assert (back.seeds, back.subseeds, back.infotexts, back.warnings, back.model_hash) == \
        ([5], [9], ["x\nSteps: 20"], ["w"], "abc")
    assert back.paths == [] and back.pngs == []  # the front saves and marks them
