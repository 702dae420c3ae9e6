"""Provenance on every generated image: an AI-generated marker (XMP + PNG text), an invisible watermark and
C2PA Content Credentials, applied by ``encode.finish_png`` and read back by ``detect`` (and
``python -m webui.provenance detect FILE...``).
"""
