"""Command-line flags (A1111's names where A1111 has one) -> Settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from webui.config import DEVICES, MEMORY_PROFILES, PRECISIONS, REPO_ROOT, Limits, Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.sh",
        description="Stable Studio: a self-hosted Stable Diffusion web UI with an A1111-compatible API. "
                    "Put checkpoints in <data-dir>/models/Stable-diffusion/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT,
                        help="root holding models/, outputs/, extensions/ and embeddings/")
    parser.add_argument("--port", type=int, default=7860, help="port for the UI and the API")
    parser.add_argument("--listen", action="store_true",
                        help="listen on 0.0.0.0 (all interfaces) instead of 127.0.0.1")
    parser.add_argument("--share", action="store_true", help="also create a public Gradio share link")
    parser.add_argument("--api", action="store_true",
                        help="accepted for A1111 compatibility; the /sdapi/v1 API is always on")
    parser.add_argument("--gradio-auth", metavar="USER:PASS[,USER2:PASS2]",
                        help="require a login for the web UI")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where models run")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="weights precision; auto = fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--memory-profile", choices=MEMORY_PROFILES, default="auto",
                        help="memory savers: auto picks from the GPU's size; 8gb and 4gb trade speed for "
                             "memory (VAE tiling, offload, attention slicing); cpu runs without a GPU")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading .ckpt/.pt pickle checkpoints (pickles can run code: only files you "
                             "trust)")
    parser.add_argument("--max-loaded-models", type=int, default=1,
                        help="checkpoints kept loaded at once (LRU)")
    parser.add_argument("--queue-size", type=int, default=Limits.queue_size,
                        help="jobs that may wait in the queue before new requests are refused")
    parser.add_argument("--no-download", action="store_true",
                        help="hide the offer to download a default model when none is present")
    return parser


def parse_auth(value: str | None) -> tuple[tuple[str, str], ...]:
    if not value:
        return ()
    pairs = []
    for item in value.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise argparse.ArgumentTypeError(f"--gradio-auth entries must look like user:password (got {item!r})")
        pairs.append((user, password))
    return tuple(pairs)


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        auth = parse_auth(args.gradio_auth)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.max_loaded_models < 1:
        parser.error("--max-loaded-models must be at least 1")
    if args.queue_size < 1:
        parser.error("--queue-size must be at least 1")
    return Settings(
        data_dir=args.data_dir.resolve(), host="0.0.0.0" if args.listen else "127.0.0.1", port=args.port,
        share=args.share, device=args.device, precision=args.precision, memory_profile=args.memory_profile,
        allow_pickle=args.allow_pickle, gradio_auth=auth, max_loaded_models=args.max_loaded_models,
        allow_download=not args.no_download, limits=Limits(queue_size=args.queue_size))
