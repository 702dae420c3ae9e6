"""Settings: everything the app needs to know about paths, device and limits.

Built once in ``app.py`` from the command line and passed down explicitly; nothing reads globals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from webui.image_io import DEFAULT_FORMATS
from webui.scaleout.config import ScaleOutConfig

REPO_ROOT = Path(__file__).resolve().parent.parent

MEMORY_PROFILES = ("auto", "8gb", "4gb", "cpu")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
ATTENTIONS = ("auto", "sdpa", "xformers", "slicing")
# --device: one of DEVICES (cpu/cuda optionally with an index), or a comma-separated list of them.
DEVICE_LIST = re.compile(r"(auto|cpu(:\d+)?|cuda(:\d+)?)(,(cpu(:\d+)?|cuda(:\d+)?))*")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Limits:
    """Request limits that keep one user's request from taking the machine down."""

    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 100
    queue_size: int = 16
    max_image_pixels: int = 4096 * 4096  # uploaded images; checked from the header, before decoding
    # Any request body, refused before parsing. 64 MiB holds a 4096x4096 photo as base64 PNG (about 30-50 MB) or
    # two incompressible 2048x2048 images; a 100 MB JSON body is refused unread.
    max_request_bytes: int = 64 * 1024 * 1024
    max_upload_bytes: int = 50 * 1024 * 1024  # one file uploaded through the web UI (Gradio's max_file_size)
    image_formats: tuple[str, ...] = DEFAULT_FORMATS  # Pillow format names any input may be; see webui/image_io.py
    # A1111 splits prompts into 75-token chunks; 20 chunks is about twice the longest prompts seen in shared
    # A1111 infotexts, while a 1 MB prompt (thousands of chunks) held the only worker for minutes.
    max_prompt_tokens: int = 75 * 20
    max_prompt_chars: int = 32_768  # checked first, so tokenizing itself stays cheap
    # width x height x batch_size x n_iter of one job: 128 images at 512x512, 32 at 1024x1024.
    max_job_pixels: int = 2048 * 2048 * 8
    max_job_seconds: float = 30 * 60  # a running job past this is stopped like Interrupt, keeping what is done
    # Style transfer runs one generator pass per tile; a 4096 px tile took ~15 GB, a 1024 px tile about 1 GB.
    max_style_tile: int = 1024


@dataclass(frozen=True)
class Settings:
    data_dir: Path = REPO_ROOT
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str = "auto"  # see DEVICE_LIST; one worker per device
    precision: str = "auto"
    memory_profile: str = "auto"
    allow_pickle: bool = False
    gradio_auth: tuple[tuple[str, str], ...] = ()
    api_auth: tuple[tuple[str, str], ...] = ()
    cors_allow_origins: tuple[str, ...] = ()
    cors_allow_origins_regex: str | None = None
    insecure_no_auth: bool = False
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback (DNS-rebinding defence)
    insecure_api_no_auth: bool = False  # exposed with a UI login but an open API
    insecure_ui_no_auth: bool = False  # exposed with an API login but an open UI
    max_loaded_models: int = 1
    allow_download: bool = True
    cancel_on_disconnect: bool = True  # a client that hangs up does not keep the GPU busy
    limits: Limits = field(default_factory=Limits)
    allow_external_model_links: bool = False  # symlinks in model folders may point outside them
    batch_dirs: tuple[Path, ...] = ()       # folders img2img Batch may use besides the data dir
    enable_remote_folders: bool = False     # allow server-folder features while exposed (--listen/--share)
    safe_mode: bool = False                 # start with every user extension disabled (built-ins stay on)
    # Install/update/remove/enable extensions while exposed (--listen/--share): A1111's flag of the same name.
    enable_insecure_extension_access: bool = False
    extensions_index: str = ""              # the Available list: an https URL or a local JSON file ("" = none)
    extension_import_seconds: float = 10.0  # an extension still importing after this is reported and skipped
    # Speed and memory (issue 13). attention: see webui/models/attention.py; compile: torch.compile the UNet with
    # an on-disk cache under <data dir>/cache/torch-compile; ram_cache_gib: checkpoints kept in RAM after they
    # leave the device, so switching back is fast (None = sized from the RAM available at load time; 0 = off).
    attention: str = "auto"
    compile: bool = False
    ram_cache_gib: float | None = None
    # Scale-out (issue 14, docs/scale-out.md): generation on Ray Serve replicas; None = this process runs it.
    scale_out: "ScaleOutConfig | None" = None

    @property
    def exposed(self) -> bool:
        """Reachable from beyond this machine (--listen or --share)."""
        return self.share or self.host not in LOOPBACK_HOSTS

    # Folders follow A1111's names so users can point us at their existing data.
    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.models_dir / "Stable-diffusion"

    @property
    def lora_dir(self) -> Path:
        return self.models_dir / "Lora"

    @property
    def vae_dir(self) -> Path:
        return self.models_dir / "VAE"

    @property
    def embeddings_dir(self) -> Path:
        return self.data_dir / "embeddings"

    @property
    def extensions_dir(self) -> Path:
        return self.data_dir / "extensions"

    @property
    def extension_data_dir(self) -> Path:
        """Each extension's own files: ``<this>/<name>/``."""
        return self.data_dir / "extension-data"

    @property
    def cache_dir(self) -> Path:
        """Caches that survive restarts (torch.compile's kernels)."""
        return self.data_dir / "cache"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def hash_cache_file(self) -> Path:
        return self.data_dir / "cache.json"

    @property
    def last_checkpoint_file(self) -> Path:
        return self.data_dir / "last-checkpoint.json"

    def ensure_dirs(self) -> None:
        """Create the folders users are told to drop files into."""
        for path in (self.checkpoints_dir, self.lora_dir, self.vae_dir, self.models_dir / "CycleGAN",
                     self.models_dir / "pix2pix", self.embeddings_dir, self.extensions_dir, self.outputs_dir):
            path.mkdir(parents=True, exist_ok=True)
