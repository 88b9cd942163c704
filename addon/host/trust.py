"""Trusting this installation's CA: the exact setting for each runtime (`orchestrator
trust`), and adding it to (or taking it out of) the Debian/Ubuntu system store.

Most runtimes ignore the system store or read only part of it: Python's SDKs use certifi
(so `SSL_CERT_FILE` names a bundle of system roots + the CA), Node and Bun carry their own
roots (`NODE_EXTRA_CA_CERTS` adds one), Java reads its keystore. The system store covers
curl, wget, Go, Ruby and anything else linked against the system's OpenSSL/GnuTLS.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from addon.errors import OrchestratorError
from addon.host.firewall import Runner, checked, run_program

SYSTEM_ANCHORS = Path("/usr/local/share/ca-certificates")  # Debian/Ubuntu local roots
ANCHOR = "local-ai-orchestrator.crt"  # update-ca-certificates reads only *.crt
UPDATE = ("update-ca-certificates",)
KEYSTORE_ALIAS = "local-ai-orchestrator"


def runtime_settings(cert: Path, bundle: Path, proxy: str | None) -> list[str]:
    """The lines `orchestrator trust` prints: the CA, the bundle, and per runtime the exact
    settings (with `proxy`, the HTTPS_PROXY each needs too; None when traffic is captured
    transparently or the proxy is a base URL)."""
    via = f"export HTTPS_PROXY={proxy} NO_PROXY=localhost,127.0.0.1" if proxy else ""
    java_proxy = ""
    if proxy:
        host, _, port = proxy.rsplit("@", 1)[-1].split("://", 1)[-1].rstrip("/").rpartition(":")
        java_proxy = f" -Dhttps.proxyHost={host.strip('[]')} -Dhttps.proxyPort={port}"
    lines = [
        f"CA certificate: {cert}",
        f"CA bundle (system roots + this CA): {bundle}",
        *([f"Every runtime below also needs the proxy: {via}"] if via else []),
        "",
        "Python (openai SDK, httpx, aiohttp via certifi):",
        f"  export SSL_CERT_FILE={bundle}",
        "Python requests:",
        f"  export REQUESTS_CA_BUNDLE={bundle}",
        "Node >= 24 (and 22.21+):",
        f"  export NODE_EXTRA_CA_CERTS={cert}"
        + (" NODE_USE_ENV_PROXY=1   # fetch honours HTTPS_PROXY only with it" if proxy else ""),
        "Node < 24:",
        f"  export NODE_EXTRA_CA_CERTS={cert}",
    ]
    if proxy:
        lines += [
            "  fetch ignores HTTPS_PROXY before Node 24: pass an undici ProxyAgent",
            "  (`fetchOptions: { dispatcher: new ProxyAgent(process.env.HTTPS_PROXY) }`),",
            "  or start with global-agent (http/https modules, not fetch):",
            f"  GLOBAL_AGENT_HTTP_PROXY={proxy} node -r global-agent/bootstrap app.js",
            "  or capture the app's traffic instead: `sudo orchestrator capture install`",
        ]
    lines += [
        "Bun:",
        f"  export NODE_EXTRA_CA_CERTS={cert}   # read at start; Bun honours HTTPS_PROXY itself",
        "curl:",
        f"  curl --cacert {cert} …   (or export CURL_CA_BUNDLE={bundle})",
        "Java (a keystore of its own, then point the JVM at it):",
        f"  keytool -importcert -noprompt -alias {KEYSTORE_ALIAS} -file {cert} "
        "-keystore orchestrator.jks -storepass changeit",
        f"  java -Djavax.net.ssl.trustStore=orchestrator.jks{java_proxy} …",
        "System store (Debian/Ubuntu; curl, wget, Go, Ruby… but not certifi, Node or Java):",
        "  sudo orchestrator trust --install-system   (undo: --remove-system)",
    ]
    return lines


def install_system(
    cert: Path,
    anchors: Path = SYSTEM_ANCHORS,
    update: Sequence[str] = UPDATE,
    run: Runner = run_program,
) -> Path:
    """Copy the CA into the system's local roots and rebuild the store; the copy's path."""
    if shutil.which(update[0]) is None:
        raise OrchestratorError(f"--install-system needs {update[0]} (Debian/Ubuntu: apt-get "
                                f"install ca-certificates); elsewhere add {cert} to the system "
                                "store by hand (Fedora/RHEL: `trust anchor FILE`)")  # fmt: skip
    anchors.mkdir(parents=True, exist_ok=True)
    target = anchors / ANCHOR
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(cert, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    checked(run, list(update))
    return target


def remove_system(
    anchors: Path = SYSTEM_ANCHORS,
    update: Sequence[str] = UPDATE,
    run: Runner = run_program,
) -> Path | None:
    """Take our CA out of the system's local roots and rebuild the store (`--fresh`, so its
    link goes too); the removed path, or None when it was not installed."""
    target = anchors / ANCHOR
    if not target.exists():
        return None
    target.unlink()
    checked(run, [*update, "--fresh"])
    return target
