"""C2PA Content Credentials for generated PNGs, signed with a key made on this machine.

The manifest says the image was created by a trained algorithm (IPTC digital source type
``trainedAlgorithmicMedia``) with Stable Studio, and carries the infotext. The signing key is an ES256 (P-256) key
whose certificate is issued by a small CA generated alongside it (c2pa refuses self-signed signing certificates);
the CA's private key is thrown away after issuing. Nothing here touches the network: no timestamp authority, no
OCSP, no fetching of remote manifests when reading (a file that points to one would otherwise make the server
request any URL it names).

The local CA is on no trust list, so verifiers report the signer as unrecognised (``signingCredential.untrusted``)
while the signature and the content hash still verify. Every image signed by one installation carries the same
certificate, so those images can be linked to each other (not to a person: the certificate names only Stable Studio).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from webui import VERSION

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
PARAMETERS_LABEL = "org.stablestudio.parameters"
CLAIM_GENERATOR = "Stable Studio"
KEY_FOLDER = "c2pa"  # under key_dir; published in one rename so key and chain always match
KEY_FILE = "signing-key.pem"
CHAIN_FILE = "certificate-chain.pem"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_VALIDITY = datetime.timedelta(days=3650)

# c2pa's defaults fetch remote manifests while reading; thumbnails would embed a second copy of the image.
_SETTINGS = {
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    "builder": {"thumbnail": {"enabled": False}},
}


class C2paUnavailable(Exception):
    """Content Credentials cannot be made here; ``str(error)`` says why. The image itself is fine to keep."""


def _c2pa():
    """The c2pa module, imported on first use so that a machine without its native library still starts."""
    try:
        import c2pa
    except (ImportError, OSError, RuntimeError, ValueError) as error:  # what its native-library loader raises
        raise C2paUnavailable(f"Content Credentials are unavailable: the c2pa library cannot be loaded ({error}).") \
            from error
    return c2pa


@dataclass(frozen=True)
class _Credentials:
    key_pem: bytes
    chain_pem: bytes  # leaf first, then the local CA


class C2paSigner:
    """Signs PNGs with the installation's key, kept in ``key_dir/c2pa/`` (folder 0700, files 0600).

    Construction touches nothing; the key and certificates are made on the first ``sign_png`` and reused after.
    Every failure (library missing, key folder unwritable or damaged, signing refused) raises ``C2paUnavailable``
    so that the caller can keep the unsigned image and say why.
    """

    def __init__(self, key_dir: Path):
        self._folder = Path(key_dir) / KEY_FOLDER
        self._lock = threading.Lock()
        self._credentials: _Credentials | None = None

    def sign_png(self, png: bytes, *, title: str, infotext: str) -> bytes:
        """Return ``png`` with a signed manifest embedded (a ``caBX`` chunk); pixels and other chunks are kept.

        Raises ValueError when ``png`` is not a PNG (a caller bug), C2paUnavailable for everything else.
        """
        if not png.startswith(_PNG_SIGNATURE):
            raise ValueError("sign_png needs PNG bytes")
        c2pa = _c2pa()
        credentials = self._load()
        manifest = _manifest_definition(title=title, infotext=infotext)
        out = io.BytesIO()
        try:
            info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credentials.chain_pem, credentials.key_pem, None)
            with c2pa.Signer.from_info(info) as signer, c2pa.Context.from_dict(_SETTINGS) as context, \
                    c2pa.Builder(manifest, context=context) as builder:
                builder.sign(signer, "image/png", io.BytesIO(png), out)
        except c2pa.C2paError as error:
            raise C2paUnavailable(f"Content Credentials could not be signed: {error}") from error
        return out.getvalue()

    def _load(self) -> _Credentials:
        with self._lock:  # two first jobs at once must not both generate
            if self._credentials is None:
                if not (self._folder / KEY_FILE).exists() and not (self._folder / CHAIN_FILE).exists():
                    _create_credentials(self._folder)
                self._credentials = _read_credentials(self._folder)
            return self._credentials


def read_manifest(png: bytes) -> dict | None:
    """The manifest store as c2pa reports it after verifying it, or None when the file has no Content Credentials.

    Also reads JPEG and WebP. The store's ``validation_state`` is "Valid" (or "Trusted") only when the signature and
    the content hash verify; a changed pixel gives "Invalid" with ``assertion.dataHash.mismatch`` in
    ``validation_status``. When the credentials cannot be checked at all (damaged manifest, manifest stored at a
    remote URL, which is never fetched), the dict has no ``active_manifest``, ``validation_state`` is "Invalid" and
    one ``validation_status`` entry says why. Raises C2paUnavailable only when the library cannot be loaded.
    """
    c2pa = _c2pa()
    try:
        with c2pa.Context.from_dict(_SETTINGS) as context:
            reader = c2pa.Reader.try_create(None, io.BytesIO(png), None, context)
            if reader is None:
                return None
            with reader:
                return json.loads(reader.json())
    except c2pa.C2paError.NotSupported:  # not an image format that can carry a manifest
        return None
    except c2pa.C2paError.RemoteManifest as error:
        return _unverifiable("org.stablestudio.manifest.remoteNotFetched",
                             f"The Content Credentials are stored at a remote URL, which is not fetched ({error}).")
    except c2pa.C2paError as error:
        return _unverifiable("org.stablestudio.manifest.unreadable",
                             f"The Content Credentials could not be read ({error}).")


def _unverifiable(code: str, explanation: str) -> dict:
    return {"validation_state": "Invalid", "validation_status": [{"code": code, "explanation": explanation}]}


def _manifest_definition(*, title: str, infotext: str) -> dict:
    return {
        "claim_generator_info": [{"name": CLAIM_GENERATOR, "version": VERSION}],
        "title": _valid_text(title),
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": {"name": CLAIM_GENERATOR, "version": VERSION},
            }]}},
            {"label": PARAMETERS_LABEL, "data": {"parameters": _valid_text(infotext)}},
        ],
    }


def _valid_text(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded, and the manifest is UTF-8 JSON: replace them rather than fail."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _create_credentials(folder: Path) -> None:
    """Write key and chain into a fresh private folder, then publish it with one rename (all or nothing)."""
    key_pem, chain_pem = _generate_key_and_chain()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-new-"))  # mode 0700
    except OSError as error:
        raise C2paUnavailable(f"Cannot create the Content Credentials key in {folder.parent}: {error}.") from error
    try:
        for name, data in ((KEY_FILE, key_pem), (CHAIN_FILE, chain_pem)):
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.rename(staging, folder)  # replaces an empty folder; fails if another process published first
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / KEY_FILE).exists():
            raise C2paUnavailable(f"Cannot create the Content Credentials key in {folder}: {error}.") from error


def _read_credentials(folder: Path) -> _Credentials:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    remedy = f"delete the folder {folder} to make a new key on the next image"
    try:
        key_pem = (folder / KEY_FILE).read_bytes()
        chain_pem = (folder / CHAIN_FILE).read_bytes()
    except OSError as error:
        raise C2paUnavailable(f"Cannot read the Content Credentials key: {error}; {remedy}.") from error
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as error:
        raise C2paUnavailable(f"The Content Credentials key or certificate in {folder} is damaged ({error}); "
                              f"{remedy}.") from error
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise C2paUnavailable(f"{folder / KEY_FILE} does not belong to the certificate in {folder / CHAIN_FILE}; "
                              f"{remedy}.")
    if leaf.not_valid_after_utc <= datetime.datetime.now(datetime.timezone.utc):
        raise C2paUnavailable(f"The Content Credentials certificate in {folder} has expired; {remedy}.")
    return _Credentials(key_pem=key_pem, chain_pem=chain_pem)


def _generate_key_and_chain() -> tuple[bytes, bytes]:
    """An ES256 signing key and its chain: a leaf for document signing, issued by a throwaway local CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stable Studio"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)

    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(hours=1)  # tolerate a clock a little behind
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("Stable Studio local CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(now + _VALIDITY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(sign=False, ca=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name("Stable Studio local signer")).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(sign=True, ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key_pem, leaf.public_bytes(pem) + ca.public_bytes(pem)
