"""Build contexts: exactly the files an image needs, never a secret, packed the same way every time.

Sending the whole repository as the context is what makes `docker build` slow and leaky: every byte is
uploaded to the engine and any `COPY . .` bakes whatever lies around (.env files, cloud credentials,
a copy of ~/.docker/config.json). A context here holds only the paths an image declares, filtered by
the repository's .dockerignore and by a fixed list of secret names and contents that no option can
turn off. The tar is deterministic (sorted, fixed mtime and owner), so its digest is a hash of the
build inputs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import ssl
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from docker.utils.build import PatternMatcher

from smkit.errors import ConfigError

# Names that are never sent to the engine, wherever they appear in a context.
SECRET_DIRS = [".aws", ".docker", ".ssh", ".gnupg", ".git", ".kube", ".azure", ".config/gcloud"]
SECRET_PATTERNS = [
    *(f"**/{d}/**" for d in SECRET_DIRS),
    "**/.env",
    "**/.env.*",
    "**/*.pem",
    "**/*.key",
    "**/*.p12",
    "**/*.pfx",
    "**/id_rsa*",
    "**/id_ecdsa*",
    "**/id_ed25519*",
    "**/.netrc",
    "**/.pypirc",
    "**/.git-credentials",
]
# Contents that give a secret away whatever the file is called: a private key, AWS keys, a (renamed)
# docker config, and tokens whose shape is their own (GitHub, PyPI, npm, Slack).
SECRET_CONTENT = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    rb"|aws_secret_access_key|aws_session_token"
    rb'|"auths"\s*:\s*\{'
    rb"|AKIA[0-9A-Z]{16}"
    rb"|\bgh[pousr]_[A-Za-z0-9]{36}|\bgithub_pat_[A-Za-z0-9_]{22,}"
    rb"|\bpypi-AgEIcHlwaS5vcmc"
    rb"|_authToken\s*="
    rb"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
)
# Files larger than this are not scanned for secret contents (data files, wheels).
SCAN_LIMIT = 4 * 1024 * 1024
FIXED_MTIME = 1_700_000_000  # any constant: the tar, and so the context digest, must not depend on checkout time


def _ignore_patterns(root: Path) -> list[str]:
    ignore_file = root / ".dockerignore"
    if not ignore_file.exists():
        return []
    lines = (line.strip() for line in ignore_file.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass
class BuildContext:
    """The files of one build, keyed by their path inside the context.

    Contents are read when a file is added, so the digest and the tar describe the same bytes even if a
    file is edited while a build runs."""

    root: Path
    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path, why) for the user to see

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        self._dockerignore = PatternMatcher(_ignore_patterns(self.root))
        self._secrets = PatternMatcher(list(SECRET_PATTERNS))

    def add(self, relpath: str, dest: str | None = None, skip: tuple[str, ...] = ()) -> None:
        """Add a file or a whole directory of the root: under the same path, or under `dest` instead
        (e.g. the scripts directory as code/). `skip`: root-relative paths to leave out. The filters
        (secrets, .dockerignore) always judge the path in the root, wherever the file lands."""
        source = self.root / relpath
        if not source.exists():
            raise ConfigError(
                f"The build input {relpath} does not exist under {self.root}.",
                "fix the path in images.toml (paths are relative to the directory of images.toml)",
            )
        paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        skipped = {(self.root / s).resolve() for s in skip}
        for path in paths:
            if path.resolve() in skipped:
                continue
            arcname = path.relative_to(self.root).as_posix()
            if self._secrets.matches(arcname):
                self.left_out.append((arcname, "its name marks it as a secret"))
            elif self._dockerignore.matches(arcname):
                self.left_out.append((arcname, ".dockerignore"))
            elif "__pycache__" in arcname.split("/") or arcname.endswith(".pyc"):
                continue
            else:
                data = path.read_bytes()
                if len(data) <= SCAN_LIMIT and SECRET_CONTENT.search(data):
                    self.left_out.append((arcname, "its contents look like a credential or a private key"))
                    continue
                target = arcname
                if dest is not None:
                    inside = path.name if source.is_file() else path.relative_to(source).as_posix()
                    target = f"{dest.rstrip('/')}/{inside}"
                    if target in self.files:
                        raise ConfigError(
                            f"Two build inputs land on {target} (the second is {arcname}).",
                            "rename one of the files: the `scripts` directories are merged into /opt/ml/code",
                        )
                self.add_bytes(target, data, executable=os.access(path, os.X_OK))

    def add_bytes(self, arcname: str, data: bytes, executable: bool = False) -> None:
        self.files[arcname] = data
        self.modes[arcname] = 0o755 if executable else 0o644

    def add_file_as(self, path: Path, arcname: str) -> None:
        self.add_bytes(arcname, Path(path).read_bytes(), executable=os.access(path, os.X_OK))

    def file_digests(self) -> dict[str, str]:
        return {name: hashlib.sha256(self.files[name]).hexdigest() for name in sorted(self.files)}

    def digest(self, *extra: str) -> str:
        """sha256 of every file's path, mode and content, plus any extra inputs (build args, base image id)."""
        h = hashlib.sha256()
        for name, file_hash in self.file_digests().items():
            h.update(f"{name}\0{self.modes[name]:o}\0{file_hash}\n".encode())
        for item in extra:
            h.update(f"extra\0{item}\n".encode())
        return h.hexdigest()

    def tar(self) -> io.BytesIO:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(self.files):
                info = tarfile.TarInfo(name)
                info.size = len(self.files[name])
                info.mode = self.modes[name]
                info.mtime = FIXED_MTIME
                archive.addfile(info, io.BytesIO(self.files[name]))
        buffer.seek(0)
        return buffer

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


def build_ca_bundle() -> bytes:
    """The CA bundle this host trusts, for pip inside builds.

    Builders often sit behind a TLS-intercepting proxy whose CA only the host trusts; the images'
    own bundles do not know it. Handing pip the host's bundle at build time works there and
    everywhere else (it holds the public roots too).
    """
    candidates = [
        os.environ.get("PIP_CERT"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    import certifi  # requests' dependency; the last resort on hosts without a system bundle

    return Path(certifi.where()).read_bytes()
