"""Remote inputs: gs://, az:// and Azure blob https:// paths turned into local copies in a cache.

The one module that imports blobfile. Scripts pass every flag that names an input through `localize` before anything
reads it, so the rest of pagoda sees local paths only; outputs stay local (`refuse_remote_output`: atomic renames and
folder locks do not exist on buckets).

Cache: $XDG_CACHE_HOME/pagoda/remote/<sha256 of the URL, 16 hex>/ holds `data/` (the file, with an export's sidecar
beside it, or the mirrored folder) and `records/` (per file: URL, size, remote version, sha256). A download lands in a
`.partial` file that is checked (the size and, where the store publishes one, the md5 the store reports; a pinned
sha256) and only then renamed into place, after which its record is written: a file without its record, as a killed
fetch leaves it, is never used. A cached single file is re-hashed on every use; a folder's files are checked by size.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import urllib.parse

from . import checkpoint, logger

# The EDM ImageNet-64 teacher of the consistency-models release, which the ImageNet recipes start from.
TEACHER_URL = "https://openaipublic.blob.core.windows.net/consistency/edm_imagenet64_ema.pt"
# sha256 of released files whose publisher gives one. The teacher above has none published: its loader's
# released-layout check (model_io.infer_released_config) is what recognises it.
PINNED_SHA256 = {}
# Route Azure blob URLs to an emulator such as Azurite (http://127.0.0.1:10000): https://ACCOUNT.blob.core.windows.net/
# REST becomes ENDPOINT/ACCOUNT/REST, Azurite's path-style layout. Unset: the real service.
ENDPOINT_ENV = "PAGODA_AZURE_BLOB_ENDPOINT"
RETRIES = 5  # per request, with blobfile's backoff; an unreachable host fails within seconds instead of never
CHUNK_BYTES = 8 << 20
AZURE_HOST = ".blob.core.windows.net"


class RemoteError(RuntimeError):
    """A remote input that cannot be used: its host is unreachable, or its download fails its checks."""


class _Damaged(Exception):
    """A download whose bytes are not the blob's (short, or another md5)."""


def is_remote(path):
    return isinstance(path, str) and path.startswith(("gs://", "az://", "https://", "http://"))


def refuse_remote_output(path, *, flag):
    """ValueError when `path` (the value of --flag, an output folder) is remote."""
    if is_remote(path):
        raise ValueError(f"--{flag} {path}: outputs go to a local folder (atomic renames and the folder lock do not "
                         "exist on buckets); write them locally and copy them up when the run is done")


def cache_root():
    """$XDG_CACHE_HOME (or ~/.cache) / pagoda / remote, read at call time so tests can redirect it."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pagoda", "remote")


def split_pin(path):
    """(URL, pinned sha256 or None): a `#sha256=<hex>` suffix pins the file's digest (pip's convention), else the
    PINNED_SHA256 entry of the URL."""
    url, _, fragment = path.partition("#")
    pinned = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
    if fragment and not pinned:
        raise ValueError(f"{path}: the only URL suffix understood is #sha256=<64 hex digits>")
    url = _canonical_url(url)
    return url, pinned or PINNED_SHA256.get(url)


def _canonical_url(url):
    """Azure paths in the https form blobfile lists them in (az://ACCOUNT/C/B -> https://ACCOUNT.blob...)."""
    if url.startswith("az://"):
        account, _, rest = url[len("az://"):].partition("/")
        return f"https://{account}{AZURE_HOST}/{rest}".rstrip("/")
    host = urllib.parse.urlparse(url).hostname or ""
    if url.startswith("http") and not (url.startswith("https://") and host.endswith(AZURE_HOST)):
        raise ValueError(f"{url}: remote inputs are gs://BUCKET/..., az://ACCOUNT/CONTAINER/... or "
                         f"https://ACCOUNT{AZURE_HOST}/CONTAINER/...; download other URLs by hand and pass the file")
    return url.rstrip("/")


def localize(path, *, flag="input"):
    """The local path of input `path` (the value of --flag): itself when local, else its verified copy in the
    cache, fetched now unless the cache holds the current version. A file URL brings its export sidecar along."""
    if not is_remote(path):
        return path
    url, pinned = split_pin(path)
    root = os.path.join(cache_root(), hashlib.sha256(url.encode()).hexdigest()[:16])
    with _locked(root):
        _drop_partials(root)
        try:
            return _Fetch(url, root, flag=flag).run(pinned)
        except _unreachable_errors() as exc:
            cached = _offline_copy(root, url, pinned)
            if cached is None:
                name = url.rstrip("/").rsplit("/", 1)[-1]
                raise RemoteError(f"cannot reach {url} ({_first_line(exc)}) and nothing usable is cached for it in "
                                  f"{root}; fetch it by other means and pass the local path instead, e.g. "
                                  f"--{flag} ./{name}") from None
            logger.log(f"warning: cannot reach {url} ({_first_line(exc)}); using the cached copy {cached}")
            return cached


class _Fetch:
    """One URL: a file (plus the sidecar next to it, if the store has one) or a folder, into `root`."""

    def __init__(self, url, root, *, flag):
        self.url, self.root, self.flag = url, root, flag
        self.ctx = _context()
        self.name = url.rstrip("/").rsplit("/", 1)[-1]

    def run(self, pinned):
        stat = self._stat(self.url)
        if stat is not None:
            path = self.file(self.url, stat, self.name, pinned=pinned, whole=True)
            if self.url.endswith(".pt"):
                self.sidecar()
            kind = "file"
        else:
            if pinned:
                raise ValueError(f"{self.url}#sha256=... pins a file, but {self.url} is not a file")
            path = self.folder()
            kind = "folder"
        checkpoint.atomic_write_text(json.dumps({"url": self.url, "kind": kind, "path": path}),
                                     os.path.join(self.root, "resolved.json"))
        return path

    def sidecar(self):
        """An export's `.json` beside its `.pt`, when the store has one (a released checkpoint has none)."""
        url, relative = checkpoint.sidecar_path(self.url), checkpoint.sidecar_path(self.name)
        stat = self._stat(url)
        if stat is not None:
            self.file(url, stat, relative, pinned=None, whole=True)
        else:  # a sidecar the store no longer has must not describe the new weights
            _remove(os.path.join(self.root, "data", relative), os.path.join(self.root, "records", relative + ".json"))

    def _stat(self, url):
        try:
            return self.ctx.stat(url)
        except FileNotFoundError:
            return None

    def folder(self):
        prefix = self.url.rstrip("/") + "/"
        entries = [e for e in self.ctx.scanglob(prefix + "**") if e.is_file]
        if not entries:
            raise FileNotFoundError(f"--{self.flag} {self.url}: no such file or folder in its bucket")
        wanted = set()
        logger.log(f"mirroring {self.url} ({len(entries):,} files) into {os.path.join(self.root, 'data', self.name)}")
        for entry in logger.progress(entries, desc=f"fetching {self.name}", unit="file"):
            inside = entry.path[len(prefix):]
            if inside.startswith("/") or ".." in inside.split("/"):
                raise ValueError(f"{entry.path}: a blob name that would leave the cache folder")
            relative = os.path.join(self.name, inside)
            wanted.add(relative)
            self.file(entry.path, entry.stat, relative, pinned=None, whole=False)
        _prune(os.path.join(self.root, "data", self.name), wanted, self.root)
        return os.path.join(self.root, "data", self.name)

    def file(self, url, stat, relative, *, pinned, whole):
        """Reuse the cached `relative` when its record matches the remote version, else download it (a second try
        when the first is damaged). `whole`: a single file (re-hashed on reuse, announced, a byte progress bar),
        not one of a folder's many."""
        dest = os.path.join(self.root, "data", relative)
        record_path = os.path.join(self.root, "records", relative + ".json")
        record = checkpoint.read_json_record(record_path)
        if (record and record["url"] == url and record["version"] == stat.version and record["size"] == stat.size
                and _intact(dest, record, rehash=whole)):
            if pinned and record["sha256"] != pinned:
                raise RemoteError(_pin_mismatch(url, record["sha256"], pinned))
            return dest
        if record:
            os.remove(record_path)
        if whole:
            logger.log(f"fetching {url} ({stat.size:,} bytes) into {dest}")
        for attempt in (1, 2):
            try:
                digest = _download(self.ctx, url, stat, dest, pinned=pinned, bar=whole)
                break
            except _Damaged as exc:
                if attempt == 2:
                    raise RemoteError(f"{url}: {exc}, twice; nothing was cached. Try again later, or fetch it by "
                                      f"other means and pass the local path to --{self.flag}") from None
                logger.log(f"{url}: {exc}; discarded, fetching it again")
        checkpoint.atomic_write_text(json.dumps({"url": url, "version": stat.version, "size": stat.size,
                                                 "sha256": digest}), record_path)
        return dest


def _download(ctx, url, stat, dest, *, pinned, bar):
    """Stream `url` into `dest`.partial.<pid>, check it, rename it to `dest`; returns its sha256."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    partial = f"{dest}.partial.{os.getpid()}"
    sha256, md5, size = hashlib.sha256(), hashlib.md5(), 0
    bar = logger.progress(total=stat.size, desc=f"fetching {os.path.basename(dest)}", unit="B") if bar else None
    try:
        with ctx.BlobFile(url, "rb", streaming=True, file_size=stat.size) as src, open(partial, "wb") as out:
            while chunk := src.read(CHUNK_BYTES):
                out.write(chunk)
                sha256.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                if bar:
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if size != stat.size:
            raise _Damaged(f"the download stopped at {size:,} of {stat.size:,} bytes")
        if stat.md5 and md5.hexdigest() != stat.md5:
            raise _Damaged(f"the download has md5 {md5.hexdigest()}, the store reports {stat.md5}")
        if pinned and sha256.hexdigest() != pinned:
            raise RemoteError(_pin_mismatch(url, sha256.hexdigest(), pinned) + "; the download was discarded")
        os.replace(partial, dest)
    finally:
        if bar:
            bar.close()
        if os.path.exists(partial):
            os.remove(partial)
    return sha256.hexdigest()


def _pin_mismatch(url, digest, pinned):
    return (f"{url} has sha256 {digest}, but {pinned} is pinned for it: the file at that URL is not the one pinned. "
            "Pass a copy you trust as a local path, or correct the pin")


def _intact(dest, record, *, rehash):
    if not os.path.isfile(dest) or os.path.getsize(dest) != record["size"]:
        return False
    return not rehash or _sha256(dest) == record["sha256"]


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _offline_copy(root, url, pinned):
    """The path a previous complete fetch of `url` resolved to, if its files are all still intact."""
    resolved = checkpoint.read_json_record(os.path.join(root, "resolved.json"))
    if not resolved or resolved["url"] != url:
        return None
    records_dir = os.path.join(root, "records")
    for folder, _, names in os.walk(records_dir):
        for name in names:
            record = checkpoint.read_json_record(os.path.join(folder, name))
            relative = os.path.relpath(os.path.join(folder, name), records_dir)[:-len(".json")]
            if not record or not _intact(os.path.join(root, "data", relative), record,
                                         rehash=resolved["kind"] == "file"):
                return None
            if pinned and resolved["kind"] == "file" and record["url"] == url and record["sha256"] != pinned:
                return None
    return resolved["path"]


def _prune(folder, wanted, root):
    """Remove mirrored files (and records) the remote folder no longer has."""
    for parent, _, names in os.walk(folder):
        for name in names:
            relative = os.path.relpath(os.path.join(parent, name), os.path.join(root, "data"))
            if relative not in wanted:
                _remove(os.path.join(parent, name), os.path.join(root, "records", relative + ".json"))


def _remove(*paths):
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _drop_partials(root):
    """Leftovers of killed fetches (only the lock holder writes, so none is in progress)."""
    for parent, _, names in os.walk(os.path.join(root, "data")):
        for name in names:
            if ".partial." in name:
                os.remove(os.path.join(parent, name))


@contextlib.contextmanager
def _locked(root):
    """One fetcher per URL across processes (every rank of a launch resolves the same flags)."""
    os.makedirs(root, exist_ok=True)
    with open(root + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_line(exc):
    """The cause without blobfile's request dump."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unreachable_errors():
    import blobfile
    return (blobfile.Error,)


_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        import blobfile
        endpoint = os.environ.get(ENDPOINT_ENV)
        pool = _emulator_pool_class()(endpoint) if endpoint else None
        _CONTEXT = blobfile.create_context(retry_limit=RETRIES, retry_log_threshold=RETRIES - 1,
                                           save_access_token_to_disk=False, output_az_paths=False,
                                           get_http_pool=(lambda: pool) if pool else None, log_callback=logger.log)
    return _CONTEXT


def _emulator_pool_class():
    import urllib3

    class EmulatorPool(urllib3.PoolManager):
        """Sends Azure blob requests to ENDPOINT/ACCOUNT/... A refused connection is reported as a protocol error:
        blobfile would otherwise look the real host name up in DNS to tell a missing account from a network
        failure."""

        def __init__(self, endpoint):
            super().__init__()
            self.endpoint = endpoint.rstrip("/")

        def request(self, method, url, *args, **kwargs):
            parts = urllib.parse.urlsplit(url)
            if parts.hostname and parts.hostname.endswith(AZURE_HOST):
                account = parts.hostname[:-len(AZURE_HOST)]
                url = f"{self.endpoint}/{account}{parts.path}" + (f"?{parts.query}" if parts.query else "")
            try:
                return super().request(method, url, *args, **kwargs)
            except urllib3.exceptions.NewConnectionError as exc:
                raise urllib3.exceptions.ProtocolError(f"cannot connect to {self.endpoint}: {exc}") from exc

    return EmulatorPool
