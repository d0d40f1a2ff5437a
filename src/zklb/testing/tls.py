"""Throw-away TLS material for a test ZooKeeper: keystores made with the JDK's ``keytool``, PEM for kazoo.

The server's key pair is self-signed for ``127.0.0.1`` and ``localhost`` and valid for two days: it is its
own CA, so the exported certificate (``ca.pem``) is all a client needs to verify the server. With client
authentication a client key pair is made too (``openssl``, since ``keytool`` cannot write a private key
as PEM, which is what Python's ``ssl`` reads) and its certificate is put in the server's trust store.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zklb.testing.errors import ZooKeeperNotInstalled, ZooKeeperStartError

__all__ = ["DEBIAN_TLS_JARS", "TLSMaterial", "find_keytool"]

#: Netty jars ZooKeeper's TLS server needs that the Debian ``zookeeper.jar`` manifest leaves out.
DEBIAN_TLS_JARS = (Path("/usr/share/java/netty-codec.jar"), Path("/usr/share/java/netty-resolver.jar"))

_VALID_DAYS = "2"
_TOOL_TIMEOUT = 60.0  # a JVM start on a loaded two-core machine takes seconds, never a minute


@dataclass(frozen=True)
class TLSMaterial:
    """Keystores for the server and PEM files for clients, all in ``directory``."""

    directory: Path
    password: str
    client_auth: bool

    @property
    def keystore(self) -> Path:
        """The server's PKCS12 key store (its key pair)."""
        return self.directory / "server.p12"

    @property
    def truststore(self) -> Path:
        """The server's PKCS12 trust store (the client certificate it accepts, if any)."""
        return self.directory / "trust.p12"

    @property
    def ca(self) -> Path:
        """The server's certificate, PEM: what a client verifies the server against."""
        return self.directory / "ca.pem"

    @property
    def client_cert(self) -> Path:
        """The client's certificate, PEM (with client authentication only)."""
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        """The client's private key, PEM, unencrypted (with client authentication only)."""
        return self.directory / "client.key"

    @classmethod
    def create(cls, directory: Path, keytool: str, *, client_auth: bool = False) -> TLSMaterial:
        """Make the key stores and PEM files in ``directory`` (created if needed)."""
        directory.mkdir(parents=True, exist_ok=True)
        material = cls(directory, secrets.token_hex(12), client_auth)
        store = ["-storetype", "PKCS12", "-storepass", material.password]
        _run(
            [
                keytool, "-genkeypair", "-alias", "zookeeper", "-keyalg", "EC", "-groupname", "secp256r1",
                "-validity", _VALID_DAYS, "-dname", "CN=localhost", "-ext", "SAN=IP:127.0.0.1,DNS:localhost",
                "-keystore", str(material.keystore), "-keypass", material.password, *store,
            ]
        )  # fmt: skip
        _run(
            [
                keytool, "-exportcert", "-rfc", "-alias", "zookeeper", "-file", str(material.ca),
                "-keystore", str(material.keystore), *store,
            ]
        )  # fmt: skip
        # The trust store must exist even without client authentication (ZooKeeper opens it); it then
        # holds the server's own certificate, which no client has the key of.
        trusted = material.ca
        if client_auth:
            openssl = shutil.which("openssl")
            if openssl is None:
                raise ZooKeeperNotInstalled(
                    "TLS client authentication needs openssl (apt-get install openssl)"
                )
            _run(
                [
                    openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", _VALID_DAYS, "-subj", "/CN=zklb-test-client",
                    "-keyout", str(material.client_key), "-out", str(material.client_cert),
                ]
            )  # fmt: skip
            trusted = material.client_cert
        _run(
            [
                keytool, "-importcert", "-noprompt", "-alias", "trusted", "-file", str(trusted),
                "-keystore", str(material.truststore), *store,
            ]
        )  # fmt: skip
        return material

    def server_config(self) -> dict[str, str]:
        """``zoo.cfg`` settings for a Netty server with these stores (the port is set per member)."""
        return {
            "serverCnxnFactory": "org.apache.zookeeper.server.NettyServerCnxnFactory",
            "ssl.keyStore.location": str(self.keystore),
            "ssl.keyStore.password": self.password,
            "ssl.keyStore.type": "PKCS12",
            "ssl.trustStore.location": str(self.truststore),
            "ssl.trustStore.password": self.password,
            "ssl.trustStore.type": "PKCS12",
            "ssl.clientAuth": "need" if self.client_auth else "none",
        }

    def kazoo_options(self) -> dict[str, Any]:
        """What a kazoo client needs to connect: TLS, the server verified against ``ca.pem``, by name too.

        kazoo checks the certificate's name only when told (``check_hostname``, off by default); the
        certificate names ``127.0.0.1`` and ``localhost``, the hosts a test connects to.
        """
        options: dict[str, Any] = {
            "use_ssl": True,
            "ca": str(self.ca),
            "verify_certs": True,
            "check_hostname": True,
        }
        if self.client_auth:
            options.update(certfile=str(self.client_cert), keyfile=str(self.client_key))
        return options

    def client_context(self) -> ssl.SSLContext:
        """An `ssl.SSLContext` for raw connections to the server (four-letter words)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client_auth:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def find_keytool(java: str) -> str:
    """The ``keytool`` next to ``java`` (the same JDK), else the one on PATH."""
    beside = Path(java).resolve().parent / "keytool"
    if beside.is_file():
        return str(beside)
    found = shutil.which("keytool")
    if found is None:
        raise ZooKeeperNotInstalled("TLS needs the JDK's keytool (apt-get install default-jdk-headless)")
    return found


def _run(command: list[str]) -> None:
    try:
        subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=_TOOL_TIMEOUT,
        )
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout + exc.stderr).decode(errors="replace")
        raise ZooKeeperStartError(f"{Path(command[0]).name} failed making TLS material:\n{output}") from exc
