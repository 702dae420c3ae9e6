"""Provenance of generated images: markers, watermark, Content Credentials."""
