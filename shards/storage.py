"""Local or remote (s3://, any fsspec URL) files behind one small interface.

Writes are atomic on both: locally a temporary name then `os.replace`; on object stores an
object only appears once its upload completes, so a killed build never leaves a half shard
under a final name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def strip_file(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def filesystem(url: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it). A custom S3 endpoint comes from storage_options or
    $AWS_ENDPOINT_URL (botocore reads it too, but older stacks do not)."""
    import fsspec

    opts = dict(storage_options or {})
    protocol = url.split("://", 1)[0]
    if protocol in ("s3", "s3a") and "client_kwargs" not in opts and os.environ.get("AWS_ENDPOINT_URL"):
        opts["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return fs, path


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    if not is_remote(url):
        with open(strip_file(url), "rb") as f:
            return f.read()
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path)


@dataclass
class Output:
    """The OUT folder of a build: relative names in, atomic writes out."""

    url: str
    storage_options: dict | None = None
    fs: object = field(default=None, repr=False)
    root: str = ""
    remote: bool = False
    _staging: str | None = field(default=None, repr=False)

    def __post_init__(self):
        self.remote = is_remote(self.url)
        if self.remote:
            self.fs, self.root = filesystem(self.url, self.storage_options)
            self.root = self.root.rstrip("/")
        else:
            self.root = os.path.abspath(strip_file(self.url))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.remote else os.path.join(self.root, rel)

    def url_of(self, rel: str) -> str:
        return f"{self.url.rstrip('/')}/{rel}"

    def ensure(self) -> None:
        """Create OUT and check that it is writable (a fatal, named error otherwise)."""
        if self.remote:
            probe = self.path(".dinotrain-write-probe")
            try:
                self.fs.pipe_file(probe, b"ok")
                self.fs.rm_file(probe)
            except Exception as e:  # noqa: BLE001 - any backend error means "not writable"
                raise OSError(f"output {self.url} is not writable: {type(e).__name__}: {e}") from e
            return
        try:
            os.makedirs(self.root, exist_ok=True)
            probe = os.path.join(self.root, ".dinotrain-write-probe")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.remove(probe)
        except OSError as e:
            raise OSError(f"output {self.root} is not writable ({e.strerror or e}): choose another --out") from e

    def staging(self) -> str:
        """A local folder for shards being written (inside OUT locally, so rename is atomic)."""
        if self._staging is None:
            if self.remote:
                self._staging = tempfile.mkdtemp(prefix="dinotrain-shards-")
            else:
                self._staging = os.path.join(self.root, ".build", "partial")
                os.makedirs(self._staging, exist_ok=True)
        return self._staging

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel)) if self.remote else os.path.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        if self.remote:
            return self.fs.cat_file(self.path(rel))
        with open(self.path(rel), "rb") as f:
            return f.read()

    def open(self, rel: str):
        """A seekable binary file for reading OUT/rel (streamed from object stores)."""
        return self.fs.open(self.path(rel), "rb") if self.remote else open(self.path(rel), "rb")

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.remote:
            self.fs.pipe_file(self.path(rel), data)
            return
        final = self.path(rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def commit(self, local: str, rel: str) -> None:
        """Move a finished local file to OUT/rel atomically."""
        if self.remote:
            self.fs.put_file(local, self.path(rel))
            os.remove(local)
        else:
            os.replace(local, self.path(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under OUT/rel; [] when it does not exist."""
        p = self.path(rel) if rel else self.root
        if self.remote:
            try:
                return sorted(x.rstrip("/").rsplit("/", 1)[-1] for x in self.fs.ls(p, detail=False, refresh=True))
            except FileNotFoundError:
                return []
        return sorted(os.listdir(p)) if os.path.isdir(p) else []

    def remove(self, rel: str) -> None:
        p = self.path(rel)
        if self.remote:
            if self.fs.exists(p):
                self.fs.rm(p, recursive=True)
            return
        if os.path.isdir(p):
            import shutil

            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)

    def cleanup_staging(self) -> None:
        if self._staging is not None:
            import shutil

            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
