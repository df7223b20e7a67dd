"""A local stand-in of the Hugging Face hub's HTTP API (OPERATIONS.md §1), for the pull
tests: repositories are directories (tiny random weights from the tiny builders), served
on 127.0.0.1 through

- ``GET /api/models/{ns}/{name}/revision/{rev}`` -> ``{"id", "sha", "siblings"}``;
- ``GET /api/models/{ns}/{name}/tree/{rev}?recursive=...`` -> ``[{"type": "file", "path",
  "size", "oid"}]``;
- ``HEAD``/``GET /{ns}/{name}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, a quoted
  ``ETag`` and ``Content-Length``; ``Range: bytes=N-`` answered 206.

A gated repository answers 403 with ``X-Error-Code: GatedRepo`` everywhere; an unknown
one 404 with ``RepoNotFound``. ``interrupt`` names files whose first GET sends half of
the bytes and closes the connection (a dropped transfer). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "c" * 40


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Path] = {}
        self.gated: set[str] = set()
        self.interrupt: set[str] = set()  # "repo/path" whose first GET is cut short
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo: str, directory: Path, gated: bool = False) -> None:
        self.repos[repo] = directory
        if gated:
            self.gated.add(repo)

    def served(self, repo: str, path: str) -> list[dict[str, str]]:
        """Headers of the GETs of one file."""
        url = f"/{repo}/resolve/"
        return [
            h
            for m, p, h in self.requests
            if m == "GET" and p.startswith(url) and p.endswith("/" + path)
        ]

    # ------------------------------------------------------------------ protocol
    def _files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, head: bool) -> None:
        body = json.dumps({"error": f"{code}: fake hub"}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", f"{code}: fake hub")
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, data: object, head: bool) -> None:
        body = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        with self._lock:
            self.requests.append(
                ("HEAD" if head else "GET", path, {k.lower(): v for k, v in h.headers.items()})
            )
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo, kind = f"{parts[2]}/{parts[3]}", parts[4]
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo, kind = f"{parts[0]}/{parts[1]}", "resolve"
        else:
            return self._error(h, 404, "EntryNotFound", head)
        if repo not in self.repos:
            return self._error(h, 404, "RepoNotFound", head)
        if repo in self.gated:
            return self._error(h, 403, "GatedRepo", head)
        files = self._files(repo)
        root = self.repos[repo]
        if kind == "revision":
            return self._json(
                h, {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}, head
            )
        if kind == "tree":
            entries = [
                {
                    "type": "file",
                    "path": f,
                    "size": (root / f).stat().st_size,
                    "oid": hashlib.sha1((root / f).read_bytes()).hexdigest(),
                }
                for f in files
            ]
            return self._json(h, entries, head)
        name = "/".join(parts[4:])
        if name not in files:
            return self._error(h, 404, "EntryNotFound", head)
        data = (root / name).read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            status = 206
        h.send_response(status)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{etag}"')
        h.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return None
        key = f"{repo}/{name}"
        if key in self.interrupt and start == 0:
            self.interrupt.discard(key)
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the transfer drops half-way
            return None
        h.wfile.write(data[start:])
        return None
