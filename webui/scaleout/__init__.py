"""Scale-out on Ray Serve (``--ray-address``): one front process, generation on replicas across a Ray cluster.

Nothing here imports Ray at module level except the modules that only run when ``--ray-address`` is given
(front.py, replica.py, control.py, remote.py); without the flag Ray is never imported. See docs/scale-out.md.
"""
