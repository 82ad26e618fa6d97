"""Azurite (Microsoft's Azure Storage emulator, `npm install azurite`) on 127.0.0.1, when it is installed: the check
that the loopback stand-in (blob_store.py) answers as the real blob service does for what pagoda.remote asks.

Uploads are signed with the emulator's published development account key (Shared Key, path-style: the signed
resource repeats the account name); pagoda then reads anonymously from a public container, as it reads the released
checkpoints.
"""

import base64
import datetime
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (the same for every install; it guards nothing)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary():
    return os.environ.get("PAGODA_AZURITE") or shutil.which("azurite-blob")


class Azurite:
    def __init__(self, binary, folder, container="models"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.container = container
        self.process = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                                         "--location", str(folder), "--silent", "--skipApiVersionCheck"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    raise RuntimeError(f"Azurite did not start on port {self.port}")
                time.sleep(0.2)
        self._request("PUT", self.container, params={"restype": "container"},
                      headers={"x-ms-blob-public-access": "container"})
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=30)

    def url(self, name):
        return f"https://{ACCOUNT}.blob.core.windows.net/{self.container}/{name}"

    def put(self, name, data):
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        self._request("PUT", f"{self.container}/{name}", headers={"x-ms-blob-type": "BlockBlob", "Content-MD5": md5},
                      data=data)

    def _request(self, method, path, *, params=None, headers=None, data=b""):
        headers = {**(headers or {}), "Content-Type": "application/octet-stream", "x-ms-version": "2019-02-02",
                   "x-ms-date": datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")}
        headers["Authorization"] = _shared_key(method, f"/{ACCOUNT}/{ACCOUNT}/{path}", params or {}, headers,
                                               len(data))
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(f"{self.endpoint}/{ACCOUNT}/{path}{query}", data=data, method=method,
                                         headers=headers)
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
        with no_proxy.open(request, timeout=30) as response:
            return response.status


def _shared_key(method, resource, params, headers, length):
    """Azure Shared Key authorisation of a request (the string-to-sign of the 2019-02-02 service version)."""
    signed_headers = "\n".join(sorted(f"{k.lower()}:{v}" for k, v in headers.items() if k.lower().startswith("x-ms-")))
    signed_resource = "\n".join([resource] + sorted(f"{k.lower()}:{v}" for k, v in params.items()))
    text = "\n".join([method, "", "", str(length) if length else "", headers.get("Content-MD5", ""),
                      headers.get("Content-Type", ""), "", "", "", "", "", "", signed_headers, signed_resource])
    digest = hmac.digest(base64.b64decode(KEY), text.encode(), "sha256")
    return f"SharedKey {ACCOUNT}:{base64.b64encode(digest).decode()}"
