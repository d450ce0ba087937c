"""A stand-in for api.kaggle.com on 127.0.0.1, for tests of the real ``kaggle`` client.

Kaggle cannot be reached from the test machines, so this server answers the calls the client
makes, as production does: POST ``/v1/<service>/<method>`` with a JSON body, HTTP basic auth
(username and key) or a bearer token, and ``DownloadDataset`` answered with a redirect to the
archive, which is served with ``Content-Length``, ``ETag`` and HTTP Range support.

``mode`` makes it misbehave: ``401``, ``403``, ``404`` (every call answers that status),
``cut`` (the first transfer of the archive stops half-way), ``corrupt`` (bytes in the middle
of the archive are flipped), ``truncated`` (only the first half is served, with a matching
length).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLUG = "tawsifurrahman/covid19-radiography-database"
USER, KEY, TOKEN = "alice", "k3y-0f-al1ce-9f8e7d", "KGAT_t0ken-0f-al1ce"  # made-up test credentials


class KaggleStub:
    def __init__(self, datasets: dict[str, bytes], username: str, key: str, token: str = "", version: int = 7) -> None:
        self.datasets, self.version, self.mode = datasets, version, "ok"
        self.username, self.token = username, token
        self.basic = "Basic " + base64.b64encode(f"{username}:{key}".encode()).decode()
        self.calls: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self.cuts = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> KaggleStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def archive(self, ref: str) -> bytes:
        data = self.datasets[ref]
        if self.mode == "corrupt":
            middle = len(data) // 2
            return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]
        if self.mode == "truncated":
            return data[: len(data) // 2]
        return data


def _handler(stub: KaggleStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep the test output quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            stub.calls.append(("POST", self.path, dict(self.headers)))
            method = self.path.rsplit("/", 1)[-1]
            if method == "IntrospectToken":
                active = bool(stub.token) and body.get("token") == stub.token
                return self._json(200, {"active": active, "username": stub.username if active else ""})
            if not self._authorised():
                return self._json(401, {"code": 401, "message": "Unauthenticated"})
            if stub.mode in ("403", "404"):
                return self._json(int(stub.mode), {"code": int(stub.mode), "message": "refused"})
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref not in stub.datasets:
                return self._json(404, {"code": 404, "message": f"Dataset {ref} not found"})
            if method == "GetDataset":
                return self._json(200, {"ref": ref, "currentVersionNumber": stub.version})
            if method == "DownloadDataset":
                version = body.get("datasetVersionNumber", stub.version)
                self.send_response(302)
                self.send_header("Location", f"/files/{ref}/{version}/archive.zip")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            return self._json(404, {"code": 404, "message": f"no method {method}"})

        def do_GET(self) -> None:
            stub.calls.append(("GET", self.path, dict(self.headers)))
            ref = "/".join(self.path.split("/")[2:4])
            if not self.path.startswith("/files/") or ref not in stub.datasets:
                return self._json(404, {"code": 404, "message": "no such file"})
            data = stub.archive(ref)
            etag = '"' + hashlib.md5(data).hexdigest() + '"'
            start = 0
            if self.headers.get("Range", "").startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", "Sat, 06 Mar 2021 12:00:00 GMT")
            self.end_headers()
            cut = stub.mode == "cut" and stub.cuts == 0
            stub.cuts += cut
            with contextlib.suppress(ConnectionError):  # the client may drop a transfer to ask for a range
                self.wfile.write(data[start : len(data) // 2 if cut else len(data)])

        def _authorised(self) -> bool:
            given = self.headers.get("Authorization", "")
            return stub.mode != "401" and (
                given == stub.basic or (bool(stub.token) and given == f"Bearer {stub.token}")
            )

        def _json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
