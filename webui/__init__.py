"""Stable Studio: a self-hosted image-generation web UI."""

VERSION = "0.1.0"
