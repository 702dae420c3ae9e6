"""Command-line flags (A1111's names where A1111 has one) -> Settings."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from webui.api.hosts import HostError, parse_allowed_host
from webui.api.security import CredentialError, Credentials, parse_credentials, read_credentials_file
from webui.config import ATTENTIONS, DEVICE_LIST, MEMORY_PROFILES, PRECISIONS, REPO_ROOT, Limits, Settings
from webui.scaleout.config import DEFAULT_REPLICA_CACHE, ScaleOutConfig, check_address, parse_replicas
from webui.stored_options import MEMORY_PROFILE_KEY, stored_option
from webui.image_io import DEFAULT_FORMATS, OPTIONAL_FORMATS, parse_image_formats

MIB = 1024 * 1024

# What a browser sends in its Origin header: scheme://host[:port], no path, no trailing slash.
ORIGIN_PATTERN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s]+")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except "None" (those flags say in their own words what unset means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.sh",
        description="Stable Studio: a self-hosted Stable Diffusion web UI with an A1111-compatible API. "
                    "Put checkpoints in <data-dir>/models/Stable-diffusion/.",
        formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT,
                        help="root holding models/, outputs/, extensions/ and embeddings/")
    parser.add_argument("--port", type=int, default=7860, help="port for the UI and the API")
    parser.add_argument("--listen", action="store_true",
                        help="listen on 0.0.0.0 (all interfaces) instead of 127.0.0.1")
    parser.add_argument("--share", action="store_true", help="also create a public Gradio share link")
    parser.add_argument("--api", action="store_true",
                        help="accepted for A1111 compatibility; the /sdapi/v1 API is always on")
    add_security_arguments(parser)
    parser.add_argument("--device", default="auto",
                        help="where models run: auto, cpu, cuda, cuda:N, or a comma-separated list "
                             "(cuda:0,cuda:1) to run one job per device at once")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="weights precision; auto = fp16 on CUDA; on a CPU bf16 where it has native bf16 "
                             "(AVX512-BF16 or AMX), else fp32")
    parser.add_argument("--attention", choices=ATTENTIONS, default="auto",
                        help="attention kernel: auto = PyTorch SDPA (xformers when installed and measured faster "
                             "on this GPU; slicing only where memory demands it); sdpa, xformers or slicing force one")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet for faster steps (GPU; the first image of each size compiles "
                             "for a minute, cached in <data-dir>/cache/torch-compile across restarts)")
    parser.add_argument("--ram-cache-gib", type=float, default=None, metavar="GIB",
                        help="checkpoints kept in RAM after leaving the device, so switching back is fast "
                             "(default: sized from the free RAM; 0 = off)")
    add_scale_out_arguments(parser)
    parser.add_argument("--memory-profile", choices=MEMORY_PROFILES, default=None,
                        help="memory savers: auto picks per checkpoint from the GPU's free memory; 8gb and 4gb "
                             "trade speed for memory (VAE tiling, text encoders in RAM, offload); cpu runs without a GPU "
                             "(default: the profile chosen in the Settings tab, else auto)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading .ckpt/.pt pickle checkpoints (pickles can run code: only files you "
                             "trust)")
    parser.add_argument("--safe-mode", action="store_true",
                        help="start with every extension in extensions/ disabled (the built-in scripts stay on); "
                             "for finding out whether an extension is at fault")
    parser.add_argument("--extensions-index", default="", metavar="URL|FILE",
                        help="where the Extensions tab's Available list comes from: an https URL or a local JSON "
                             "file (A1111's index.json format is accepted)")
    parser.add_argument("--max-loaded-models", type=int, default=1,
                        help="checkpoints kept loaded at once (LRU)")
    parser.add_argument("--queue-size", type=int, default=Limits.queue_size,
                        help="jobs that may wait in the queue before new requests are refused")
    parser.add_argument("--keep-jobs-on-disconnect", action="store_true",
                        help="finish jobs (API and UI) even when the client that asked for them has disconnected")
    parser.add_argument("--no-download", action="store_true",
                        help="hide the offer to download a default model when none is present")
    parser.add_argument("--allow-external-model-links", action="store_true",
                        help="follow symbolic links in model folders (checkpoints, LoRA, VAE, embeddings, "
                             "CycleGAN/pix2pix) that point outside them, e.g. to models kept on another disk; "
                             "without it such links are skipped and logged")
    parser.add_argument("--image-formats", default=",".join(DEFAULT_FORMATS), metavar="FORMAT[,FORMAT2]",
                        help="image formats accepted from uploads, the API and batch folders; may add "
                             f"{', '.join(OPTIONAL_FORMATS)} (formats that run external programs, such as EPS, "
                             "are never accepted)")
    parser.add_argument("--max-prompt-tokens", type=int, default=Limits.max_prompt_tokens,
                        help="longest prompt (and negative prompt) accepted, in CLIP tokens (75 per chunk)")
    parser.add_argument("--max-job-pixels", type=int, default=Limits.max_job_pixels,
                        help="largest width x height x batch size x batch count of one job")
    parser.add_argument("--max-job-seconds", type=float, default=Limits.max_job_seconds,
                        help="a running job is stopped after this many seconds, keeping the images done; 0 = no "
                             "limit")
    parser.add_argument("--max-style-tile", type=int, default=Limits.max_style_tile,
                        help="largest style transfer tile in pixels (memory grows with its square)")
    return parser


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security", "logins and browser access; files hold user:pass entries, "
                                                  "one per line or comma-separated, # starts a comment line")
    group.add_argument("--gradio-auth", metavar="USER:PASS[,USER2:PASS2]",
                       help="require a login for the web UI and its Gradio API")
    group.add_argument("--gradio-auth-path", type=Path, metavar="PATH", help="read --gradio-auth logins from a file")
    group.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]",
                       help="require HTTP Basic auth for every /sdapi and /studio route and the API docs")
    group.add_argument("--api-auth-file", type=Path, metavar="PATH", help="read --api-auth logins from a file")
    group.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN2]",
                       help="web pages (e.g. https://example.com) allowed to call the server from a browser")
    group.add_argument("--cors-allow-origins-regex", metavar="REGEX",
                       help="same as --cors-allow-origins, for origins matching a regular expression")
    group.add_argument("--insecure-no-auth", action="store_true",
                       help="serve on the network without any login (dangerous)")
    group.add_argument("--batch-dirs", metavar="DIR[,DIR2]",
                       help="folders img2img Batch and training may read (Batch also write) besides the data dir")
    group.add_argument("--enable-remote-folders", action="store_true",
                       help="with --listen or --share, still allow features that read or write server folders "
                            "(img2img Batch, training data); off by default because every user could then reach them")
    group.add_argument("--allowed-hosts", metavar="NAME[,NAME2]",
                       help="host names the server answers to besides localhost, 127.0.0.1 and [::1] (e.g. the "
                            "machine's LAN name or a reverse proxy's name); a leading dot (.example.com) also "
                            "allows every subdomain; other names get 421 (DNS rebinding protection). With --listen, "
                            "IP addresses are always accepted")
    group.add_argument("--insecure-api-no-auth", action="store_true",
                       help="with --listen or --share and --gradio-auth: leave the /sdapi API and its /docs open "
                            "to anyone who can reach the server, without --api-auth (dangerous)")
    group.add_argument("--insecure-ui-no-auth", action="store_true",
                       help="with --listen or --share and --api-auth: leave the web UI open to anyone who can "
                            "reach the server, without --gradio-auth (dangerous)")
    group.add_argument("--enable-insecure-extension-access", action="store_true",
                       help="with --listen or --share, still allow installing, updating, removing and enabling "
                            "extensions from the UI and the API (off by default: whoever reaches the server could "
                            "run code on it)")
    group.add_argument("--max-request-mb", type=int, default=Limits.max_request_bytes // MIB,
                       help="largest request body in MiB (API JSON with base64 images, uploads); larger ones get "
                            "413 before they are read")
    group.add_argument("--max-upload-mb", type=int, default=Limits.max_upload_bytes // MIB,
                       help="largest file uploaded through the web UI, in MiB")


def read_auth(inline: str | None, path: Path | None, flag: str) -> Credentials:
    """Logins from a flag plus its file form; raises CredentialError naming the flag, or the file and line."""
    pairs = parse_credentials(inline, source=flag) if inline else ()
    if path is not None:
        pairs += read_credentials_file(path)
    return pairs


def parse_origins(value: str | None) -> tuple[str, ...]:
    origins = tuple(item.strip() for item in (value or "").split(",") if item.strip())
    for origin in origins:
        if origin != "*" and not ORIGIN_PATTERN.fullmatch(origin):
            # A trailing slash or a path would silently never match what browsers send.
            raise argparse.ArgumentTypeError(f"--cors-allow-origins: {origin!r} is not an origin like "
                                             "https://example.com or http://host:port (no path)")
    return origins


def add_scale_out_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale-out on a Ray cluster (needs requirements-ray.txt; docs/scale-out.md)")
    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="run generation on Ray Serve replicas: auto (the cluster this host joined with ray "
                            "start), HOST:6379, ray://HOST:10001, or local (start a one-host cluster here); "
                            "unset = this process generates and Ray is not imported")
    group.add_argument("--ray-replicas", default=None, metavar="N|MIN:MAX",
                       help="replica count, or autoscaling bounds from the queue length (default: one per GPU in "
                            "the cluster, at least 1)")
    group.add_argument("--ray-replica-gpus", type=float, default=None, metavar="F",
                       help="GPUs per replica (0.5 puts two on one card; default 1 when the cluster has GPUs, "
                            "else 0 = CPU replicas)")
    group.add_argument("--ray-replica-cpus", type=float, default=None, metavar="F", help="CPUs per replica (default 1)")
    group.add_argument("--ray-models-dir", type=Path, default=None, metavar="PATH",
                       help="the models folder as the replicas' hosts see it (a shared mount); checkpoints not "
                            "found there are fetched from this process by hash (default: this process's path)")
    group.add_argument("--ray-attach", action="store_true", default=None,
                       help="use the replicas the cluster deployed from webui.scaleout.serve_app (a KubeRay "
                            "RayService, deploy/rayservice.yaml) instead of deploying them; give the same flags")
    group.add_argument("--ray-replica-cache", default=None, metavar="DIR",
                       help=f"folder on each replica host for fetched checkpoints (sha256-verified; default "
                            f"{DEFAULT_REPLICA_CACHE})")


def parse_scale_out(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ScaleOutConfig | None:
    """The --ray-* flags -> ScaleOutConfig (None without --ray-address; the others then refused)."""
    if args.ray_address is None:
        given = [flag for flag, value in (("--ray-replicas", args.ray_replicas),
                                          ("--ray-replica-gpus", args.ray_replica_gpus),
                                          ("--ray-replica-cpus", args.ray_replica_cpus),
                                          ("--ray-models-dir", args.ray_models_dir),
                                          ("--ray-replica-cache", args.ray_replica_cache),
                                          ("--ray-attach", args.ray_attach)) if value is not None]
        if given:
            parser.error(f"{', '.join(given)} {'need' if len(given) > 1 else 'needs'} --ray-address")
        return None
    low = high = None
    try:
        address = check_address(args.ray_address)
    except ValueError as exc:
        parser.error(f"--ray-address: {exc}")
    if args.ray_replicas is not None:
        try:
            low, high = parse_replicas(args.ray_replicas)
        except ValueError as exc:
            parser.error(f"--ray-replicas: {exc}")
    for flag, value in (("--ray-replica-gpus", args.ray_replica_gpus), ("--ray-replica-cpus", args.ray_replica_cpus)):
        if value is not None and not value >= 0:
            parser.error(f"{flag} must be 0 or more")
    models = args.ray_models_dir.expanduser() if args.ray_models_dir is not None else None
    return ScaleOutConfig(address=address, min_replicas=low, max_replicas=high, replica_gpus=args.ray_replica_gpus,
                          replica_cpus=1.0 if args.ray_replica_cpus is None else args.ray_replica_cpus,
                          models_dir=models, replica_cache=args.ray_replica_cache or DEFAULT_REPLICA_CACHE,
                          attach=bool(args.ray_attach))


def parse_folders(value: str | None, parser: argparse.ArgumentParser) -> tuple[Path, ...]:
    folders = tuple(Path(item.strip()).expanduser().resolve() for item in (value or "").split(",") if item.strip())
    for folder in folders:
        if not folder.is_dir():
            parser.error(f"--batch-dirs: {folder} is not a folder")
    return folders


def parse_allowed_hosts(value: str | None) -> tuple[str, ...]:
    try:
        return tuple(parse_allowed_host(item) for item in (value or "").split(",") if item.strip())
    except HostError as exc:
        raise argparse.ArgumentTypeError(f"--allowed-hosts: {exc}") from None


def runs_on_cpu(device: str) -> bool:
    """Whether ``--device`` puts a worker on the CPU ("auto" does where there is no CUDA device)."""
    names = device.split(",")
    if any(name.startswith("cpu") for name in names):
        return True
    if "auto" not in names:
        return False
    import torch  # only for --precision fp16 with --device auto: the usual start stays free of the import here

    return not torch.cuda.is_available()


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        gradio_auth = read_auth(args.gradio_auth, args.gradio_auth_path, "--gradio-auth")
        api_auth = read_auth(args.api_auth, args.api_auth_file, "--api-auth")
        cors_origins = parse_origins(args.cors_allow_origins)
        allowed_hosts = parse_allowed_hosts(args.allowed_hosts)
    except (CredentialError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    if args.cors_allow_origins_regex is not None:
        try:
            re.compile(args.cors_allow_origins_regex)
        except re.error as exc:
            parser.error(f"--cors-allow-origins-regex: {exc}")
    if not DEVICE_LIST.fullmatch(args.device.replace(" ", "")):
        parser.error(f"--device: {args.device!r} is not auto, cpu, cuda, cuda:N or a comma-separated list of them")
    if args.max_loaded_models < 1:
        parser.error("--max-loaded-models must be at least 1")
    if args.queue_size < 1:
        parser.error("--queue-size must be at least 1")
    for flag, value in (("--max-request-mb", args.max_request_mb), ("--max-upload-mb", args.max_upload_mb)):
        if value < 1:
            parser.error(f"{flag} must be at least 1")
    try:
        image_formats = parse_image_formats(args.image_formats)
    except ValueError as exc:
        parser.error(f"--image-formats: {exc}")
    if args.ram_cache_gib is not None and not args.ram_cache_gib >= 0:
        parser.error("--ram-cache-gib must be 0 (off) or more")
    if args.precision == "fp16" and runs_on_cpu(args.device.replace(" ", "")):
        parser.error("--precision fp16: models would run on the CPU, where fp16 is slower than fp32; "
                     "use --precision bf16 or fp32 (or auto: bf16 where the CPU has native bf16)")
    for flag, value, least in (("--max-prompt-tokens", args.max_prompt_tokens, 75),
                               ("--max-job-pixels", args.max_job_pixels, 64 * 64),
                               ("--max-job-seconds", args.max_job_seconds, 0),
                               ("--max-style-tile", args.max_style_tile, 64)):
        if not value >= least:  # also refuses nan
            parser.error(f"{flag} must be at least {least}")
    return Settings(
        data_dir=args.data_dir.resolve(), host="0.0.0.0" if args.listen else "127.0.0.1", port=args.port,
        share=args.share, device=args.device.replace(" ", ""), precision=args.precision,
        memory_profile=args.memory_profile or stored_option(args.data_dir, MEMORY_PROFILE_KEY, MEMORY_PROFILES) or "auto",
        allow_pickle=args.allow_pickle, max_loaded_models=args.max_loaded_models,
        allow_download=not args.no_download,
        limits=Limits(queue_size=args.queue_size, max_request_bytes=args.max_request_mb * MIB,
                      max_upload_bytes=args.max_upload_mb * MIB, image_formats=image_formats,
                      max_prompt_tokens=args.max_prompt_tokens, max_job_pixels=args.max_job_pixels,
                      max_job_seconds=args.max_job_seconds, max_style_tile=args.max_style_tile),
        gradio_auth=gradio_auth, api_auth=api_auth, cors_allow_origins=cors_origins,
        cors_allow_origins_regex=args.cors_allow_origins_regex, insecure_no_auth=args.insecure_no_auth,
        cancel_on_disconnect=not args.keep_jobs_on_disconnect,
        batch_dirs=parse_folders(args.batch_dirs, parser), enable_remote_folders=args.enable_remote_folders,
        allow_external_model_links=args.allow_external_model_links,
        allowed_hosts=allowed_hosts,
        insecure_api_no_auth=args.insecure_api_no_auth, insecure_ui_no_auth=args.insecure_ui_no_auth,
        safe_mode=args.safe_mode, enable_insecure_extension_access=args.enable_insecure_extension_access,
        extensions_index=args.extensions_index.strip(),
        attention=args.attention, compile=args.compile, ram_cache_gib=args.ram_cache_gib,
        scale_out=parse_scale_out(args, parser))
