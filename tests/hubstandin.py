"""A local stand-in for the Hugging Face Hub API, so `huggingface_hub`'s real create_repo / upload_folder code runs.

It serves the routes huggingface_hub 2.4 calls for `whoami`, `create_repo` and `upload_folder` (its pipelined
uploader, see huggingface_hub/_upload_pipeline.py and _commit_api.py):

    GET  /api/whoami-v2                                     {"name": user, "type": "user", "orgs": [{"name"}], ...}
    POST /api/repos/create                                  {"name", "organization", "type", "visibility"} -> {"url"}
                                                            (403 outside the user's own and its orgs' namespaces)
    GET  /api/{type}s/{ns}/{name}                           repo info: {"id", "private", "sha"}
    POST /api/validate-yaml                                 README.md front matter: parsed here (YAML, `configs:`)
    POST /api/{type}s/{ns}/{name}/preupload/{revision}      -> every file "regular" (content rides in the commit)
    POST /api/{type}s/{ns}/{name}/commit/{revision}         NDJSON: header line, then {"key": "file", "value":
                                                            {"path", "content" (base64), "encoding"}} lines

Every file is declared "regular", so no LFS / Xet storage is involved: the real Hub sends large binaries through Xet,
which this stand-in does not emulate; everything up to that choice is the library's own code. Requests without
`Authorization: Bearer <token>` get 401, like the Hub. Unknown routes answer 404 and are recorded.

    with HubStandIn(token="hf_test", user="alice") as hub:
        ... HfApi(endpoint=hub.url, token="hf_test") ...
        hub.repos[("dataset", "alice/x")] -> {"visibility": "private", "files": {path: bytes}, "commits": n}
        hub.requests -> [(method, path, headers (lower-case names), body bytes)]
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

INFO_ROUTE = re.compile(r"^/api/(model|dataset|space)s/([^/]+/[^/?]+)(?:/revision/[^/?]+)?(?:\?.*)?$")
REPO_ROUTE = re.compile(r"^/api/(model|dataset|space)s/([^/]+/[^/]+)/(preupload|commit)/([^/?]+)")


class HubStandIn:
    def __init__(self, token: str, user: str = "alice", orgs: tuple[str, ...] = ("team",)):
        self.token, self.user, self.orgs = token, user, orgs  # the token may create repos under these
        self.repos: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.unknown: list[str] = []
        self.validated: list[str] = []  # repo types whose README.md front matter passed validate-yaml
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubStandIn":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- routes ----------------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "GET" and path.startswith("/api/whoami-v2"):
            return 200, {"type": "user", "name": self.user, "auth": {"accessToken": {"role": "write"}},
                         "orgs": [{"type": "org", "name": org} for org in self.orgs]}
        if method == "POST" and path.startswith("/api/repos/create"):
            return self.create(json.loads(body))
        if method == "POST" and path.startswith("/api/validate-yaml"):
            return self.validate_yaml(json.loads(body))
        info = INFO_ROUTE.match(path)
        if method == "GET" and info:
            return self.info(info.group(1), info.group(2))
        m = REPO_ROUTE.match(path)
        if method == "POST" and m:
            kind, repo_id, action = m.group(1), m.group(2), m.group(3)
            if (kind, repo_id) not in self.repos:
                return 404, {"error": f"Repository {repo_id} not found"}
            return self.preupload(json.loads(body)) if action == "preupload" else self.commit(kind, repo_id, body)
        self.unknown.append(f"{method} {path}")
        return 404, {"error": "no such route in the stand-in"}

    def create(self, payload: dict) -> tuple[int, dict]:
        kind = payload.get("type") or "model"
        owner = payload.get("organization") or self.user
        if owner not in (self.user, *self.orgs):
            return 403, {"error": f"You don't have the rights to create a {kind} under the namespace \"{owner}\""}
        repo_id = f"{owner}/{payload['name']}"
        url = f"{self.url}/{'' if kind == 'model' else kind + 's/'}{repo_id}"
        if (kind, repo_id) in self.repos:  # the Hub answers 409 with the url; exist_ok=True reads it
            return 409, {"error": "You already created this repo", "url": url}
        self.repos[(kind, repo_id)] = {"visibility": payload.get("visibility", "public"), "files": {}, "commits": 0}
        return 200, {"url": url}

    def info(self, kind: str, repo_id: str) -> tuple[int, dict]:
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            return 404, {"error": f"Repository {repo_id} not found"}
        return 200, {"id": repo_id, "private": repo["visibility"] == "private", "sha": repo.get("sha", "0" * 40)}

    def validate_yaml(self, payload: dict) -> tuple[int, dict]:
        """The front matter must parse, and a data set's `configs` must name their data files, as the Hub checks."""
        text = payload["content"]
        if not text.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            meta = yaml.safe_load(text.split("---\n")[1]) or {}
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"invalid YAML: {e}"}]}
        bad = [c for c in meta.get("configs", []) if not (c.get("config_name") and c.get("data_files"))]
        if bad:
            return 400, {"errors": [{"message": f"configs without config_name or data_files: {bad}"}]}
        self.validated.append(payload.get("repoType"))
        return 200, {"errors": [], "warnings": []}

    def preupload(self, payload: dict) -> tuple[int, dict]:
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in payload["files"]]
        return 200, {"files": files, "commitOid": "0" * 40}

    def commit(self, kind: str, repo_id: str, body: bytes) -> tuple[int, dict]:
        repo = self.repos[(kind, repo_id)]
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] != "header":
                return 400, {"error": f"the stand-in only takes regular files, got {item['key']}"}
        repo["commits"] += 1
        oid = repo["sha"] = hashlib.sha1(body).hexdigest()
        prefix = "" if kind == "model" else f"{kind}s/"
        return 200, {"commitUrl": f"{self.url}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": None}

    # ---- HTTP plumbing ---------------------------------------------------------------------------------------------
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    status, payload = 401, {"error": "Invalid credentials in Authorization header"}
                else:
                    status, payload = hub.route(method, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_HEAD(self):
                self._serve("HEAD")

            def log_message(self, *args):  # keep test output clean
                pass

        return Handler
