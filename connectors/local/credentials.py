"""The secured stack's certificates and passwords: made once in ``<stack_dir>/secrets``, reused afterwards.

The certificates come from the ``openssl`` command (no password is involved: the keys are not encrypted, and
the folder is readable by its owner only). Passwords are random and written straight to files; they are never
put on a command line or in a log line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import string
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from connectors.local.errors import StackError

#: The user the secured stack's clients log in as, on Kafka (SCRAM) and Cassandra (a superuser role).
CLIENT_USER = "walstream"
#: Elasticsearch's built-in superuser, whose password the node takes from its keystore at first start.
ELASTICSEARCH_USER = "elastic"

#: Letters and digits only: the passwords go into Kafka's SCRAM and JAAS syntax and into CQL string literals
#: unescaped. 32 of them carry about 190 bits.
_ALPHABET = string.ascii_letters + string.digits
_PASSWORD_LENGTH = 32
_CERT_DAYS = 3650
_HOST_NAMES = ("localhost",)
_HOST_IPS = ("127.0.0.1",)


@dataclass(frozen=True, slots=True)
class StackSecrets:
    """Where each secret of a secured stack lives. Read a password with :meth:`password`."""

    dir: Path

    @property
    def ca_file(self) -> Path:
        """The private CA's certificate: what every client trusts."""
        return self.dir / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.dir / "ca-key.pem"

    @property
    def key_file(self) -> Path:
        """The servers' private key (PKCS#8, not encrypted)."""
        return self.dir / "server-key.pem"

    @property
    def cert_file(self) -> Path:
        """The servers' certificate for 127.0.0.1 and localhost, signed by the CA."""
        return self.dir / "server.pem"

    @property
    def keystore_file(self) -> Path:
        """The key followed by the certificate chain: the PEM "keystore" Kafka and Cassandra read."""
        return self.dir / "server-keystore.pem"

    @property
    def kafka_password_file(self) -> Path:
        return self.dir / "kafka.password"

    @property
    def cassandra_password_file(self) -> Path:
        return self.dir / "cassandra.password"

    @property
    def elasticsearch_password_file(self) -> Path:
        return self.dir / "elasticsearch.password"

    def password(self, path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise StackError(
                f"{path} is missing; the secured stack's secrets are incomplete. Start the stack with "
                "`walstream stack up --secure` to make them (a stack dir whose data was made with other "
                "passwords has to be deleted first)."
            ) from None

    def complete(self) -> bool:
        return all(p.is_file() for p in self._all_files())

    def _all_files(self) -> tuple[Path, ...]:
        return (
            self.ca_file,
            self.ca_key_file,
            self.key_file,
            self.cert_file,
            self.keystore_file,
            self.kafka_password_file,
            self.cassandra_password_file,
            self.elasticsearch_password_file,
        )


def secrets_of(stack_dir: Path) -> StackSecrets:
    return StackSecrets(stack_dir / "secrets")


def random_password() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(_PASSWORD_LENGTH))


def ensure_secrets(stack_dir: Path) -> StackSecrets:
    """Make whatever secret is missing, keep every one that exists, and return where they are.

    The certificate files are made together: if any of them is missing, all are made anew (the services read
    them at each start, so new ones simply take over). A password is only ever made when its file is missing,
    because the servers' data remembers it.
    """
    found = secrets_of(stack_dir)
    found.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(found.dir, 0o700)
    certificates = (found.ca_file, found.ca_key_file, found.key_file, found.cert_file, found.keystore_file)
    if not all(p.is_file() for p in certificates):
        _make_certificates(found)
    for path in (found.kafka_password_file, found.cassandra_password_file, found.elasticsearch_password_file):
        if not path.is_file():
            write_private(path, random_password() + "\n")
    for path in found._all_files():
        os.chmod(path, 0o600)  # also repairs files a person copied in with looser modes
    return found


def write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only, from the first byte on."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)


def _make_certificates(found: StackSecrets) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError(
            "the secured stack makes its certificates with the openssl command, which is not installed "
            "(Debian: apt-get install openssl)"
        )
    san = ",".join([*(f"DNS:{n}" for n in _HOST_NAMES), *(f"IP:{ip}" for ip in _HOST_IPS)])
    # Made in a private temporary folder inside the secrets folder (relative names, cwd there), then moved in.
    with tempfile.TemporaryDirectory(dir=found.dir, prefix=".making-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "server.ext").write_text(
            f"subjectAltName={san}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            # Elasticsearch's transport layer and Kafka's inter-broker link use the same certificate as client.
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        days = f"-days {_CERT_DAYS}"
        steps = [
            "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca-key.pem",
            f"req -x509 -new -key ca-key.pem -sha256 {days} -subj /CN=walstream-local-stack-CA"
            " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem",
            "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server-key.pem",
            "req -new -key server-key.pem -subj /CN=localhost -out server.csr",
            f"x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -sha256 {days}"
            " -extfile server.ext -out server.pem",
        ]
        for step in steps:
            args = step.split()
            done = subprocess.run([openssl, *args], capture_output=True, text=True, check=False, cwd=tmp)
            if done.returncode != 0:
                raise StackError(f"openssl {args[0]} failed while making the stack's certificates: {done.stderr}")
        chain = [(tmp / name).read_text() for name in ("server-key.pem", "server.pem", "ca.pem")]
        (tmp / "server-keystore.pem").write_text("".join(chain))
        for made in ("ca-key.pem", "ca.pem", "server-key.pem", "server.pem", "server-keystore.pem"):
            os.chmod(tmp / made, 0o600)
            (tmp / made).replace(found.dir / made)
