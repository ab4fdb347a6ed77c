"""A minimal Hugging Face Hub for tests: model repos in memory, over HTTP on 127.0.0.1.

It implements just what `huggingface_hub` (2.x) calls to push a folder and to download from it
(see /work/shared/notes/offline-data.md): repo creation, YAML validation, preupload (every file is
"regular", so content travels inline in the commit and no LFS/Xet storage is needed), commits, model
info, file trees and file resolution. Anything else gets a 404 naming the request, and is recorded
in `HubServer.unhandled` so that a test can show it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

REPO = r"(?P<repo>[^/]+/[^/]+)"


class _Repo:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.sha = hashlib.sha1(b"initial").hexdigest()

    def commit(self, added: dict[str, bytes], deleted: list[str], message: str) -> str:
        self.files.update(added)
        for path in deleted:
            self.files.pop(path, None)
        self.sha = hashlib.sha1((self.sha + message + json.dumps(sorted(self.files))).encode()).hexdigest()
        return self.sha


class _Handler(BaseHTTPRequestHandler):
    server: HubServer

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        return None

    # -- helpers ------------------------------------------------------------------------------
    def _send(
        self,
        status: int,
        body: bytes | dict | list = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        payload = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _not_found(self, code: str, message: str) -> None:
        self._send(404, {"error": message}, headers={"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _repo(self, repo_id: str) -> _Repo | None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._not_found("RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _unhandled(self) -> None:
        self.server.unhandled.append(f"{self.command} {self.path}")
        self._send(404, {"error": f"test hub server: {self.command} {urlparse(self.path).path} is not implemented"})

    # -- routes -------------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if path == "/api/repos/create":
            request = json.loads(body or b"{}")
            repo_id = (
                request["name"]
                if "/" in request["name"]
                else f"{request.get('organization') or 'user'}/{request['name']}"
            )
            url = f"{self.server.url}/{repo_id}"
            if repo_id in self.server.repos:
                self._send(409, {"error": "You already created this model repo", "url": url})
            else:
                self.server.repos[repo_id] = _Repo()
                self._send(200, {"url": url, "name": repo_id})
        elif path == "/api/validate-yaml":
            self._send(200, {"errors": [], "warnings": []})
        elif match := re.fullmatch(rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", path):
            if self._repo(match["repo"]) is not None:
                files = json.loads(body)["files"]
                self._send(
                    200,
                    {
                        "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files],
                        "commitOid": self.server.repos[match["repo"]].sha,
                    },
                )
        elif match := re.fullmatch(rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", path):
            if self.server.fail_commits:
                self._send(403, {"error": "test hub server: commits are refused (fail_commits=True)"})
                return
            repo = self._repo(match["repo"])
            if repo is None:
                return
            added, deleted, message = {}, [], ""
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    message = value.get("summary", "")
                elif item["key"] == "file":
                    added[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
                else:
                    self._send(400, {"error": f"test hub server: commit operation {item['key']!r} is not supported"})
                    return
            sha = repo.commit(added, deleted, message)
            self._send(
                200, {"commitUrl": f"{self.server.url}/{match['repo']}/commit/{sha}", "commitOid": sha, "success": True}
            )
        else:
            self._unhandled()

    def do_GET(self) -> None:
        path = unquote(urlparse(self.path).path)
        if match := re.fullmatch(rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", path):
            repo = self._repo(match["repo"])
            if repo is not None:
                self._send(
                    200,
                    {
                        "id": match["repo"],
                        "modelId": match["repo"],
                        "sha": repo.sha,
                        "private": False,
                        "tags": [],
                        "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                    },
                )
        elif match := re.fullmatch(rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", path):
            repo = self._repo(match["repo"])
            if repo is not None:
                prefix = (match["sub"] or "").strip("/")
                entries = [
                    {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in sorted(repo.files.items())
                    if not prefix or name.startswith(prefix + "/")
                ]
                self._send(200, entries)
        elif match := re.fullmatch(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path):
            self._resolve(match)
        else:
            self._unhandled()

    def do_HEAD(self) -> None:
        path = unquote(urlparse(self.path).path)
        if match := re.fullmatch(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path):
            self._resolve(match)
        else:
            self._unhandled()

    def _resolve(self, match: re.Match) -> None:
        repo = self._repo(match["repo"])
        if repo is None:
            return
        if match["rev"] not in ("main", repo.sha):
            self._not_found("RevisionNotFound", f"Revision {match['rev']} not found")
            return
        data = repo.files.get(match["file"])
        if data is None:
            self._not_found("EntryNotFound", f"{match['file']} does not exist in {match['repo']}")
            return
        etag = f'"{hashlib.sha1(data).hexdigest()}"'
        self._send(
            200, data, headers={"X-Repo-Commit": repo.sha, "ETag": etag}, content_type="application/octet-stream"
        )


class HubServer(ThreadingHTTPServer):
    """The test Hub; use as a context manager: ``with HubServer() as hub: ... hub.url ...``.

    `fail_commits=True` refuses every commit with HTTP 403 (a push that fails half-way; 5xx would be retried).
    """

    daemon_threads = True

    def __init__(self, fail_commits: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fail_commits = fail_commits
        self.repos: dict[str, _Repo] = {}
        self.unhandled: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
