"""This installation's CA: where it lives, making sure it exists with a private key only its
owner can read, and the combined bundle (system roots + this CA) for `SSL_CERT_FILE`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import certifi
from mitmproxy import certs

CA_CERT = "mitmproxy-ca-cert.pem"
BUNDLE = "orchestrator-ca-bundle.pem"
PRIVATE = ("mitmproxy-ca.pem", "mitmproxy-ca.p12")  # files holding the private key

log = logging.getLogger("orchestrator")


def default_confdir(config_dir: Path) -> Path:
    """Where the CA lives unless `--confdir` says otherwise: `data/mitmproxy` beside the config."""
    return config_dir / "data" / "mitmproxy"


def ensure_ca(confdir: Path) -> Path:
    """Create the CA on first use (mitmproxy's format); tighten permissions; return the
    certificate's path."""
    confdir.mkdir(parents=True, exist_ok=True)
    os.chmod(confdir, 0o700)
    if not (confdir / CA_CERT).exists():
        certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    for name in PRIVATE:
        key = confdir / name
        if key.exists():
            os.chmod(key, 0o600)
    return confdir / CA_CERT


def write_bundle(confdir: Path) -> Path:
    """System roots (certifi) followed by this CA: trust both with one file."""
    ca = ensure_ca(confdir)
    bundle = confdir / BUNDLE
    roots = Path(certifi.where()).read_bytes()
    tmp = bundle.with_suffix(".tmp")
    tmp.write_bytes(roots.rstrip(b"\n") + b"\n" + ca.read_bytes())
    os.replace(tmp, bundle)
    return bundle


def bundle_or_cert(confdir: Path) -> Path:
    """The bundle for `SSL_CERT_FILE`, freshly written; if it cannot be written, a warning
    and the bare CA certificate's path (apps then need system roots from elsewhere)."""
    try:
        return write_bundle(confdir)
    except OSError as e:
        log.warning("could not write the CA bundle in %s: %s", confdir, e)
        return confdir / CA_CERT
