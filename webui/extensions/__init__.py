"""Extensions: the public API (``api``), manifests, the loader that isolates failures, and the host that runs hooks.

Extensions import ``webui.extensions.api`` only; everything else here is the core's side of that contract.
"""
