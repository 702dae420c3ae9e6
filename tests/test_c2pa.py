"""Content Credentials: every signed image verifies, says it is AI-generated, and any change to it is detected."""

from __future__ import annotations

import http.server
import io
import struct
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from webui.provenance.c2pa_manifest import (
    CHAIN_FILE,
    KEY_FILE,
    KEY_FOLDER,
    PARAMETERS_LABEL,
    TRAINED_ALGORITHMIC_MEDIA,
    C2paSigner,
    C2paUnavailable,
    read_manifest,
)

INFOTEXT = "a lighthouse at dusk\nNegative prompt: blur\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42"
XMP = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'


def make_png(*, compress_level: int = 6, xmp: bool = True) -> bytes:
    """A 64x64 noisy image with the text chunks the saver writes before signing."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFOTEXT)
    if xmp:
        info.add_itxt("XML:com.adobe.xmp", XMP)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the chunk, data length) for each chunk."""
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((data[pos + 4:pos + 8], pos, length))
        pos += 12 + length
    return chunks


def active(store: dict) -> dict:
    return store["manifests"][store["active_manifest"]]


def codes(entries: list[dict]) -> set[str]:
    return {entry["code"] for entry in entries}


OTHER_MANIFEST = {"title": "other", "assertions": [{"label": "c2pa.actions", "data": {"actions": [
    {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA}]}}]}


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("c2pa") / "provenance"


@pytest.fixture(scope="module")
def signer(key_dir) -> C2paSigner:
    return C2paSigner(key_dir)


@pytest.fixture(scope="module")
def signed(signer) -> bytes:
    return signer.sign_png(make_png(), title="00001-42.png", infotext=INFOTEXT)


def test_signed_image_says_it_is_ai_generated_and_verifies_offline(signed):
    store = read_manifest(signed)
    assert store is not None
    assert store["validation_state"] == "Valid"
    manifest = active(store)
    assert manifest["title"] == "00001-42.png"
    assert manifest["claim_generator_info"][0]["name"] == "Stable Studio"
    assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
    actions = next(data["actions"] for label, data in assertions.items() if label.startswith("c2pa.actions"))
    assert [(a["action"], a["digitalSourceType"]) for a in actions] == [("c2pa.created", TRAINED_ALGORITHMIC_MEDIA)]
    assert assertions[PARAMETERS_LABEL] == {"parameters": INFOTEXT}
    results = store["validation_results"]["activeManifest"]
    assert {"claimSignature.validated", "assertion.dataHash.match"} <= codes(results["success"])
    # The locally made CA is on no trust list: that is the only complaint, and it does not make the image invalid.
    assert codes(results["failure"]) == {"signingCredential.untrusted"}


def test_signing_keeps_pixels_and_the_text_chunks_written_before_it(signer):
    original = make_png()
    signed = signer.sign_png(original, title="t.png", infotext=INFOTEXT)
    before, after = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(signed))
    assert np.array_equal(np.asarray(before), np.asarray(after))
    assert after.text["parameters"] == INFOTEXT
    assert after.text["XML:com.adobe.xmp"] == XMP
    assert b"caBX" in [kind for kind, _, _ in png_chunks(signed)]


def test_one_changed_pixel_byte_is_reported_as_a_hash_mismatch(signer):
    # Stored (uncompressed) deflate puts raw pixel bytes in IDAT, so one byte can be changed and the PNG stays valid.
    signed = signer.sign_png(make_png(compress_level=0), title="t.png", infotext=INFOTEXT)
    idats = [c for c in png_chunks(signed) if c[0] == b"IDAT"]
    assert len(idats) == 1
    _, pos, length = idats[0]
    data = bytearray(signed)
    start = pos + 8 + 2 + 5  # chunk header, zlib header, stored-block header
    raw_end = pos + 8 + length - 4  # before the adler32 of the zlib stream
    target = start + 10 * (1 + 64 * 3) + 1 + 30  # row 10 (after its filter byte), the 11th pixel's red byte
    data[target] ^= 0x01
    data[raw_end:raw_end + 4] = struct.pack(">I", zlib.adler32(bytes(data[start:raw_end])))
    data[pos + 8 + length:pos + 12 + length] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4:pos + 8 + length])))
    tampered = bytes(data)

    diff = np.asarray(Image.open(io.BytesIO(tampered))).astype(int) - np.asarray(Image.open(io.BytesIO(signed)))
    assert np.count_nonzero(diff) == 1  # a real, decodable image differing in one pixel value

    store = read_manifest(tampered)
    assert store["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in codes(store["validation_status"])


@pytest.mark.parametrize("offset", [100, 400, 1000], ids=lambda offset: f"byte-{offset}")
def test_a_changed_manifest_byte_reads_as_invalid(signed, offset):
    # (Bytes of the signature's padding are covered by nothing, by design of C2PA: not tested here.)
    data = bytearray(signed)
    _, pos, length = next(c for c in png_chunks(signed) if c[0] == b"caBX")
    data[pos + 8 + offset] ^= 0xFF
    data[pos + 8 + length:pos + 12 + length] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4:pos + 8 + length])))
    store = read_manifest(bytes(data))
    assert store is not None and store["validation_state"] == "Invalid"


def test_key_is_made_once_private_and_reused_across_restarts(signer, signed, key_dir):
    folder = key_dir / KEY_FOLDER
    assert sorted(p.name for p in key_dir.iterdir()) == [KEY_FOLDER]  # no staging folder left behind
    assert folder.stat().st_mode & 0o777 == 0o700
    for name in (KEY_FILE, CHAIN_FILE):
        assert (folder / name).stat().st_mode & 0o777 == 0o600
    key_bytes = (folder / KEY_FILE).read_bytes()

    restarted = C2paSigner(key_dir).sign_png(make_png(), title="t.png", infotext="x")
    serial = active(read_manifest(restarted))["signature_info"]["cert_serial_number"]
    assert serial == active(read_manifest(signed))["signature_info"]["cert_serial_number"]
    assert (folder / KEY_FILE).read_bytes() == key_bytes


def test_signers_racing_on_first_use_end_with_one_key(tmp_path):
    signers = [C2paSigner(tmp_path / "provenance") for _ in range(4)]
    barrier = threading.Barrier(len(signers))
    results: list[bytes] = []

    def sign(s: C2paSigner) -> None:
        barrier.wait()
        results.append(s.sign_png(make_png(), title="t.png", infotext="x"))

    threads = [threading.Thread(target=sign, args=(s,)) for s in signers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    serials = {active(read_manifest(png))["signature_info"]["cert_serial_number"] for png in results}
    assert len(serials) == 1
    assert sorted(p.name for p in (tmp_path / "provenance").iterdir()) == [KEY_FOLDER]


def test_damaged_key_is_reported_and_left_alone(tmp_path):
    C2paSigner(tmp_path).sign_png(make_png(), title="t.png", infotext="x")
    key_file = tmp_path / KEY_FOLDER / KEY_FILE
    key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(C2paUnavailable, match="damaged.*delete the folder"):
        C2paSigner(tmp_path).sign_png(make_png(), title="t.png", infotext="x")
    assert b"not a key" in key_file.read_bytes()


def test_key_from_another_installation_is_refused(tmp_path):
    for name in ("a", "b"):
        C2paSigner(tmp_path / name).sign_png(make_png(), title="t.png", infotext="x")
    other_key = (tmp_path / "b" / KEY_FOLDER / KEY_FILE).read_bytes()
    (tmp_path / "a" / KEY_FOLDER / KEY_FILE).write_bytes(other_key)
    with pytest.raises(C2paUnavailable, match="does not belong to the certificate"):
        C2paSigner(tmp_path / "a").sign_png(make_png(), title="t.png", infotext="x")


def test_unwritable_key_folder_raises_c2pa_unavailable(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # a file where the key folder's parent should be: fails even for root
    with pytest.raises(C2paUnavailable, match="Cannot create the Content Credentials key"):
        C2paSigner(blocker / "provenance").sign_png(make_png(), title="t.png", infotext="x")


def test_missing_library_raises_c2pa_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "c2pa", None)  # what `import c2pa` sees when the package is absent
    with pytest.raises(C2paUnavailable, match="c2pa library cannot be loaded"):
        C2paSigner(tmp_path).sign_png(make_png(), title="t.png", infotext="x")
    with pytest.raises(C2paUnavailable):
        read_manifest(make_png())


def test_infotext_with_a_lone_surrogate_still_signs(signer):
    png = signer.sign_png(make_png(), title="t\udcff.png", infotext="a cat \udcff")
    store = read_manifest(png)
    assert store["validation_state"] == "Valid"
    params = {a["label"]: a["data"] for a in active(store)["assertions"]}[PARAMETERS_LABEL]["parameters"]
    assert params.startswith("a cat ")


def test_sign_png_refuses_non_png_bytes(signer):
    with pytest.raises(ValueError, match="PNG"):
        signer.sign_png(b"GIF89a", title="t", infotext="x")


@pytest.mark.parametrize("data", [make_png(), b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40],
                         ids=["plain-png", "empty", "text", "broken-png"])
def test_files_without_credentials_never_claim_valid_ones(data):
    store = read_manifest(data)
    assert store is None or (store["validation_state"] == "Invalid" and "active_manifest" not in store)


def test_reading_never_fetches_a_remote_manifest(key_dir, signed):
    """A file may point at a manifest URL; reading it (PNG Info, the detect route) must not make the server fetch it."""
    import c2pa

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/manifest.c2pa"
        folder = key_dir / KEY_FOLDER
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, (folder / CHAIN_FILE).read_bytes(),
                                   (folder / KEY_FILE).read_bytes(), None)
        out = io.BytesIO()
        with c2pa.Signer.from_info(info) as remote_signer, c2pa.Builder(OTHER_MANIFEST) as builder:
            builder.set_no_embed()
            builder.set_remote_url(url)
            # c2pa writes the URL into an XMP packet of its own; it cannot add it to our minimal one
            builder.sign(remote_signer, "image/png", io.BytesIO(make_png(xmp=False)), out)
        pointing = out.getvalue()
        assert url.encode() in pointing

        store = read_manifest(pointing)
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []
    assert store["validation_state"] == "Invalid" and "active_manifest" not in store
    assert "remote" in store["validation_status"][0]["explanation"]


def test_jpeg_credentials_are_read_too_and_a_resave_drops_them(key_dir, signed):
    """The detect route gets JPEGs as well; re-encoding strips Content Credentials (the watermark is what survives)."""
    import c2pa

    folder = key_dir / KEY_FOLDER
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, (folder / CHAIN_FILE).read_bytes(),
                               (folder / KEY_FILE).read_bytes(), None)
    jpeg, out = io.BytesIO(), io.BytesIO()
    Image.open(io.BytesIO(signed)).convert("RGB").save(jpeg, "JPEG", quality=90)
    with c2pa.Signer.from_info(info) as jpeg_signer, c2pa.Builder(OTHER_MANIFEST) as builder:
        builder.sign(jpeg_signer, "image/jpeg", io.BytesIO(jpeg.getvalue()), out)
    assert read_manifest(out.getvalue())["validation_state"] == "Valid"

    resaved = io.BytesIO()
    Image.open(io.BytesIO(signed)).save(resaved, "PNG")
    assert read_manifest(resaved.getvalue()) is None
