"""A stand-in for Azure Blob Storage on 127.0.0.1: the read side of its REST API that blobfile uses, for public
containers (anonymous access), in Azurite's path-style layout (http://127.0.0.1:PORT/ACCOUNT/CONTAINER/BLOB).

pagoda.remote routes https://ACCOUNT.blob.core.windows.net/ there when PAGODA_AZURE_BLOB_ENDPOINT is set, so the
real blobfile client (access check, HEAD, ranged GETs, listings, retries) runs against it. Faults for the tests:
`damage[name] = n` serves n corrupted bodies of that blob (one byte flipped), `throttle` sleeps between the
chunks of a body so a fetch can be killed midway; `requests` counts (method, name) of every request, `sent` the
body bytes written per blob.
"""

import base64
import collections
import datetime
import hashlib
import http.server
import threading
import time
import urllib.parse
from email.utils import format_datetime
from xml.sax.saxutils import escape

STAMP = format_datetime(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), usegmt=True)


class BlobStore:
    def __init__(self, account="pagodatest", container="models"):
        self.account, self.container = account, container
        self.blobs = {}
        self.damage = collections.Counter()
        self.throttle = 0.0
        self.requests = collections.Counter()
        self.sent = collections.Counter()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def url(self, name):
        return f"https://{self.account}.blob.core.windows.net/{self.container}/{name}"

    def put(self, name, data):
        self.blobs[name] = bytes(data)

    def put_file(self, name, path):
        with open(path, "rb") as f:
            self.put(name, f.read())

    def fetches(self, name):
        """Body downloads of `name` (GETs; HEADs only ask for the version)."""
        return self.requests["GET", name]


def _etag(data):
    return '"0x' + hashlib.md5(data).hexdigest()[:16].upper() + '"'


def _handler(store):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _target(self):
            parts = urllib.parse.urlsplit(self.path)
            segments = parts.path.lstrip("/").split("/", 2)
            query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
            if len(segments) < 2 or segments[0] != store.account or segments[1] != store.container:
                return None, query
            return urllib.parse.unquote(segments[2]) if len(segments) == 3 else "", query

        def _reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self):
            name, _ = self._target()
            store.requests["HEAD", name] += 1
            if name not in store.blobs:
                return self._reply(404, headers=[("x-ms-error-code", "BlobNotFound")])
            data = store.blobs[name]
            self.send_response(200)
            for key, value in _properties(data):
                self.send_header(key, value)
            self.end_headers()

        def do_GET(self):
            name, query = self._target()
            if name is None:
                return self._reply(404, headers=[("x-ms-error-code", "ContainerNotFound")])
            if query.get("comp") == "list":
                store.requests["LIST", query.get("prefix", "")] += 1
                return self._reply(200, _listing(store, query), [("Content-Type", "application/xml")])
            if query.get("restype") == "container":
                return self._reply(200)
            store.requests["GET", name] += 1
            if name not in store.blobs:
                return self._reply(404, headers=[("x-ms-error-code", "BlobNotFound")])
            self._send_range(name, store.blobs[name])

        def _send_range(self, name, data):
            start, end = _range(self.headers.get("Range"), len(data))
            if start >= len(data) and len(data):
                return self._reply(416)
            body = bytearray(data[start:end + 1])
            if store.damage[name] > 0 and body:
                store.damage[name] -= 1
                body[len(body) // 2] ^= 0xFF
            headers = [("Content-Range", f"bytes {start}-{end}/{len(data)}"), ("ETag", _etag(data)),
                       ("Last-Modified", STAMP), ("x-ms-creation-time", STAMP)]
            self.send_response(206)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = max(1, len(body) // 16) if store.throttle else len(body) or 1
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset:offset + step])
                self.wfile.flush()
                store.sent[name] += len(body[offset:offset + step])
                time.sleep(store.throttle)

    return Handler


def _range(header, size):
    if not header:
        return 0, size - 1
    first, _, last = header.split("=", 1)[1].partition("-")
    return int(first), min(int(last), size - 1) if last else size - 1


def _properties(data):
    return [("Content-Length", str(len(data))), ("ETag", _etag(data)), ("Last-Modified", STAMP),
            ("x-ms-creation-time", STAMP), ("Content-MD5", base64.b64encode(hashlib.md5(data).digest()).decode()),
            ("x-ms-blob-type", "BlockBlob")]


def _listing(store, query):
    """EnumerationResults for a prefix (and a "/" delimiter: the names below it fold into BlobPrefix entries)."""
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter")
    blobs, prefixes = [], set()
    for name in sorted(store.blobs):
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if delimiter and delimiter in rest:
            prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
        else:
            blobs.append(name)
    parts = [f"<BlobPrefix><Name>{escape(p)}</Name></BlobPrefix>" for p in sorted(prefixes)]
    for name in blobs:
        props = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in _listed_properties(store.blobs[name]))
        parts.append(f"<Blob><Name>{escape(name)}</Name><Properties>{props}</Properties></Blob>")
    return (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Prefix>{escape(prefix)}</Prefix>'
            f"<Blobs>{''.join(parts)}</Blobs><NextMarker /></EnumerationResults>").encode()


def _listed_properties(data):
    names = {"x-ms-creation-time": "Creation-Time", "ETag": "Etag"}
    return [(names.get(k, k), v) for k, v in _properties(data) if k != "x-ms-blob-type"]
