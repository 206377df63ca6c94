"""A small in-memory, Hub-compatible HTTP server for offline tests.

It implements just enough of the Hugging Face Hub API for the *real* ``huggingface_hub`` client
(and ``transformers.from_pretrained``) to create repos and branches, upload regular and LFS files
(basic LFS transfer, never Xet), make NDJSON commits and download files back, all over loopback.

Only the standard library is used. Start it with :class:`LocalHub` (a context manager)::

    with LocalHub(tokens={"hf_TESTSECRET": "test-user"}) as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_TESTSECRET")

Uploads: ``hf_xet`` is chosen client-side whenever it is installed (``huggingface_hub.utils.
is_xet_available``), so tests must set ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True`` (or the
``HF_HUB_DISABLE_XET=1`` env var before import). Downloads never use Xet because this server sends no
``X-Xet-Hash`` header.

Failure injection: ``hub.fail_next("commit", status=500, times=1, revision="main")``. Every request is
logged in ``hub.requests`` and every commit in ``hub.commits``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

# Patterns a new Hub repo's initial .gitattributes stores in LFS (subset of the Hub's default file).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.bin", "*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.gguf",
                    "*.npy", "*.npz", "*.zip", "*.tar.gz", "*.png", "*.jpg", "*.jpeg", "tokenizer.json")
)
LFS_PATTERNS = re.findall(r"^(\S+) filter=lfs", DEFAULT_GITATTRIBUTES, flags=re.M)
# The Hub also stores any file of 10 MB or more in LFS, whatever its name.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
# `base_model_relation` values the Hub accepts in a model card.
ALLOWED_BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")

ENDPOINT_NAMES = (
    "whoami", "create_repo", "repo_info", "branch", "refs", "validate_yaml", "preupload", "lfs_batch",
    "lfs_upload", "commit", "commits", "tree", "paths_info", "resolve",
)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    """One file of a commit: regular (content inline) or LFS (content in the server's LFS store)."""

    size: int
    oid: str  # git blob sha1 (of the content, or of the LFS pointer)
    lfs_sha256: str | None = None
    content: bytes | None = None  # regular files only


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    files: dict[str, StoredFile]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)


@dataclass
class _Failure:
    endpoint: str
    status: int  # 0: drop the connection without an answer
    times: int
    revision: str | None
    message: str
    after: bool  # apply the request first, then fail (an answer lost on the way back)


class HubApiError(Exception):
    """Raised inside a handler to answer with an error status, Hub-style headers and JSON body."""

    def __init__(self, status: int, message: str, error_code: str | None = None, **body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.body = body  # more fields of the JSON answer (the Hub's 409 on create names the repo's url)


class LocalHub:
    """Threaded in-memory Hub on 127.0.0.1 (random free port).

    Args:
        tokens: valid access tokens -> user name. Write calls need one; reads of public repos do not.
    """

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens: dict[str, str] = dict(tokens or {})
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[dict[str, Any]] = []
        self.commits: list[dict[str, Any]] = []  # one entry per successful commit (not initial ones)
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalHub":
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers
    def fail_next(
        self, endpoint: str, *, status: int = 500, times: int = 1, revision: str | None = None,
        message: str = "Injected failure", after: bool = False,
    ) -> None:
        """Answer the next ``times`` calls to ``endpoint`` (one of ENDPOINT_NAMES) with ``status``.

        ``status=0`` drops the connection without answering (a network error for the client).
        ``revision`` restricts the failure to calls on that branch (commit, preupload, branch...).
        ``after=True`` applies the request first (e.g. the commit lands) and only then fails: an answer
        lost on its way back.
        """
        if endpoint not in ENDPOINT_NAMES:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINT_NAMES}")
        with self._lock:
            self._failures.append(_Failure(endpoint, status, times, revision, message, after))

    def create_repo_with_files(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main") -> str:
        """Seed a repo (as if pushed earlier) and return the commit id."""
        with self._lock:
            repo = self.repos.get(repo_id) or self._new_repo(repo_id, private=False)
            parent = repo.branches.get(branch)
            base = dict(repo.commits[parent].files) if parent else {}
            for path, data in files.items():
                base[path] = self._store(path, data)
            return self._commit(repo, branch, parent, "seed", "", base, record=False)

    def branch_files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """The full content of a branch head: path -> bytes."""
        with self._lock:
            repo = self.repos[repo_id]
            files = repo.commits[repo.branches[branch]].files
            return {p: self._read(f) for p, f in files.items()}

    def commits_on(self, repo_id: str, branch: str) -> list[dict[str, Any]]:
        """Successful API commits (not seeds, not initial commits) made to ``branch``."""
        return [c for c in self.commits if c["repo_id"] == repo_id and c["branch"] == branch]

    def calls(self, endpoint: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["endpoint"] == endpoint]

    # ------------------------------------------------------------------ storage internals
    def _new_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id=repo_id, private=private)
        self.repos[repo_id] = repo
        # Like the Hub: a new repo starts with one commit holding .gitattributes.
        files = {".gitattributes": self._store(".gitattributes", DEFAULT_GITATTRIBUTES.encode(), lfs=False)}
        self._commit(repo, "main", None, "initial commit", "", files, record=False)
        return repo

    def _is_lfs_path(self, path: str, size: int) -> bool:
        name = path.rsplit("/", 1)[-1]
        return size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)

    def _store(self, path: str, data: bytes, lfs: bool | None = None) -> StoredFile:
        if lfs is None:
            lfs = self._is_lfs_path(path, len(data))
        if lfs:
            sha = hashlib.sha256(data).hexdigest()
            self.lfs_store[sha] = data
            return StoredFile(size=len(data), oid=git_blob_sha1(_lfs_pointer(sha, len(data))), lfs_sha256=sha)
        return StoredFile(size=len(data), oid=git_blob_sha1(data), content=data)

    def _read(self, f: StoredFile) -> bytes:
        if f.lfs_sha256 is not None:
            return self.lfs_store[f.lfs_sha256]
        assert f.content is not None
        return f.content

    def _commit(
        self, repo: Repo, branch: str, parent: str | None, title: str, message: str,
        files: dict[str, StoredFile], record: bool = True,
    ) -> str:
        seed = json.dumps([repo.repo_id, branch, parent, title, sorted((p, f.oid) for p, f in files.items()),
                           time.time_ns()]).encode()
        oid = hashlib.sha1(seed).hexdigest()
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        repo.commits[oid] = Commit(oid=oid, parent=parent, title=title, message=message, files=files, date=date)
        repo.branches[branch] = oid
        if record:
            self.commits.append({"repo_id": repo.repo_id, "branch": branch, "oid": oid, "title": title,
                                 "paths": sorted(files)})
        return oid

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if revision in repo.commits:
            return repo.commits[revision]
        matches = [c for oid, c in repo.commits.items() if len(revision) >= 7 and oid.startswith(revision)]
        if len(matches) == 1:
            return matches[0]
        raise HubApiError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _take_failure(self, endpoint: str, revision: str | None) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.endpoint == endpoint and (failure.revision is None or failure.revision == revision):
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return failure
        return None


_REPO = r"(?P<repo>[^/]+/[^/]+?)"


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub  # set on the bound subclass
    protocol_version = "HTTP/1.1"

    # Silence the default stderr access log: tests capture output and it is noise.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # ------------------------------------------------------------------ plumbing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _token_user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return self.hub.tokens.get(auth[len("Bearer "):])

    def _require_auth(self) -> str:
        if "Authorization" not in self.headers:
            raise HubApiError(401, "Invalid username or password.")
        user = self._token_user()
        if user is None:
            raise HubApiError(401, "Invalid credentials in Authorization header")
        return user

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        query = parse_qs(urlsplit(self.path).query)
        endpoint, handler, params = self._route(method, path)
        entry = {"method": method, "path": path, "endpoint": endpoint, "status": None}
        with self.hub._lock:
            self.hub.requests.append(entry)
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            if handler is None:
                raise HubApiError(404, f"No route for {method} {path}")
            failure = self.hub._take_failure(endpoint, unquote(params.get("rev", "")) or None)
            if failure is not None and failure.after:
                real_wfile, self.wfile = self.wfile, io.BytesIO()  # run it, throw the answer away
                try:
                    handler(params=params, query=query, body=body)
                finally:
                    self.wfile = real_wfile
            if failure is not None and failure.status == 0:
                entry["status"] = "dropped"
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if failure is not None:
                raise HubApiError(failure.status, failure.message)
            handler(params=params, query=query, body=body)
            entry["status"] = "ok"
        except HubApiError as err:
            entry["status"] = err.status
            headers = {"X-Error-Message": err.message}
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            self._json(err.status, {"error": err.message, **err.body}, headers)
        except Exception as err:  # a server bug must show up as a 500, not a hung client
            entry["status"] = 500
            self._json(500, {"error": f"server error: {err!r}"})

    def _route(self, method: str, path: str) -> tuple[str, Any, dict[str, str]]:
        routes: list[tuple[str, str, str, Any]] = [
            ("GET", r"/api/whoami-v2", "whoami", self.h_whoami),
            ("POST", r"/api/repos/create", "create_repo", self.h_create_repo),
            ("POST", r"/api/validate-yaml", "validate_yaml", self.h_validate_yaml),
            ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", "repo_info", self.h_repo_info),
            ("GET", rf"/api/models/{_REPO}/refs", "refs", self.h_refs),
            ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?", "tree", self.h_tree),
            ("GET", rf"/api/models/{_REPO}/commits/(?P<rev>[^/]+)", "commits", self.h_commits),
            ("POST", rf"/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info", self.h_paths_info),
            ("POST", rf"/api/models/{_REPO}/branch/(?P<rev>[^/]+)", "branch", self.h_branch),
            ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload", self.h_preupload),
            ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit", self.h_commit),
            ("GET", rf"/api/models/{_REPO}", "repo_info", self.h_repo_info),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch", self.h_lfs_batch),
            ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_upload", self.h_lfs_upload),
            ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<sub>.+)", "resolve", self.h_resolve),
            ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<sub>.+)", "resolve", self.h_resolve),
        ]
        for route_method, pattern, name, handler in routes:
            if route_method == method and (m := re.fullmatch(pattern, path)):
                return name, handler, {k: v for k, v in m.groupdict().items() if v is not None}
        return "unknown", None, {}

    def _repo(self, params: dict[str, str], *, write: bool = False) -> Repo:
        repo_id = unquote(params["repo"])
        user = self._require_auth() if write else self._token_user()
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and user is None):
            raise HubApiError(404, "Repository not found", "RepoNotFound")
        return repo

    # ------------------------------------------------------------------ API handlers
    def h_whoami(self, **_: Any) -> None:
        user = self._require_auth()
        self._json(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def h_create_repo(self, body: bytes, **_: Any) -> None:
        user = self._require_auth()
        payload = json.loads(body or b"{}")
        name, org = payload.get("name"), payload.get("organization") or user
        repo_id = f"{org}/{name}"
        with self.hub._lock:
            if repo_id in self.hub.repos:
                raise HubApiError(409, "You already created this model repo", url=f"{self._endpoint()}/{repo_id}")
            self.hub._new_repo(repo_id, private=payload.get("visibility") == "private")
        self._json(200, {"url": f"{self._endpoint()}/{repo_id}", "name": repo_id})

    def _endpoint(self) -> str:
        return self.hub.endpoint

    def h_repo_info(self, params: dict[str, str], **_: Any) -> None:
        repo = self._repo(params)
        with self.hub._lock:
            commit = self.hub._resolve(repo, params.get("rev", "main"))
            self._json(200, {
                "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": repo.private,
                "lastModified": commit.date, "tags": [], "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            })

    def h_refs(self, params: dict[str, str], **_: Any) -> None:
        repo = self._repo(params)
        with self.hub._lock:
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()]
        self._json(200, {"branches": branches, "tags": [], "converts": []})

    def _entry(self, path: str, f: StoredFile) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": f.size, "oid": f.oid}
        if f.lfs_sha256 is not None:
            entry["lfs"] = {"oid": f.lfs_sha256, "size": f.size,
                            "pointerSize": len(_lfs_pointer(f.lfs_sha256, f.size))}
        return entry

    def h_tree(self, params: dict[str, str], query: dict[str, list[str]], **_: Any) -> None:
        repo = self._repo(params)
        recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
        prefix = unquote(params.get("sub", "")).strip("/")
        with self.hub._lock:
            files = self.hub._resolve(repo, params["rev"]).files
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, f in sorted(files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base):]
            if recursive or "/" not in rest:
                entries[path] = self._entry(path, f)
            if "/" in rest:
                # Directories along the way (all of them when recursive, the first level otherwise).
                parts = rest.split("/")[:-1]
                for i in range(1, (len(parts) if recursive else 1) + 1):
                    d = base + "/".join(parts[:i])
                    entries.setdefault(d, {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()})
        if prefix and not entries:
            raise HubApiError(404, f"{prefix} does not exist", "EntryNotFound")
        self._json(200, list(entries.values()))

    def h_commits(self, params: dict[str, str], **_: Any) -> None:
        repo = self._repo(params)
        out = []
        with self.hub._lock:
            commit: Commit | None = self.hub._resolve(repo, params["rev"])
            while commit is not None:
                out.append({"id": commit.oid, "authors": [{"user": "test-user"}], "date": commit.date,
                            "title": commit.title, "message": commit.message})
                commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, out)

    def h_paths_info(self, params: dict[str, str], body: bytes, **_: Any) -> None:
        repo = self._repo(params)
        form = parse_qs(body.decode()) if body and not body.lstrip().startswith(b"{") else {}
        paths = form.get("paths") or (json.loads(body).get("paths", []) if body.lstrip().startswith(b"{") else [])
        with self.hub._lock:
            files = self.hub._resolve(repo, params["rev"]).files
        self._json(200, [self._entry(p, files[p]) for p in paths if p in files])

    def h_branch(self, params: dict[str, str], body: bytes, **_: Any) -> None:
        repo = self._repo(params, write=True)
        branch = unquote(params["rev"])
        payload = json.loads(body or b"{}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", branch) or branch.startswith("refs"):
            raise HubApiError(400, f"Invalid reference for a branch: {branch}")
        with self.hub._lock:
            if branch in repo.branches:
                raise HubApiError(409, f"Reference already exists: refs/heads/{branch}")
            start = self.hub._resolve(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.oid
        self._json(200, {})

    def h_validate_yaml(self, body: bytes, **_: Any) -> None:
        payload = json.loads(body or b"{}")
        errors = validate_card_yaml(payload.get("content", ""))
        if errors:
            self._json(400, {"errors": [{"message": e} for e in errors], "warnings": []})
        else:
            self._json(200, {"errors": [], "warnings": []})

    def h_preupload(self, params: dict[str, str], body: bytes, **_: Any) -> None:
        repo = self._repo(params, write=True)
        payload = json.loads(body)
        with self.hub._lock:
            files = self.hub._resolve(repo, params["rev"]).files
        out = []
        for item in payload["files"]:
            path, size = item["path"], int(item["size"])
            mode = "lfs" if self.hub._is_lfs_path(path, size) else "regular"
            existing = files.get(path)
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if existing.lfs_sha256 is not None else existing.oid
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": files and self.hub._resolve(repo, params["rev"]).oid})

    def h_lfs_batch(self, params: dict[str, str], body: bytes, **_: Any) -> None:
        self._repo(params, write=True)
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            out: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_store:  # already stored: no action, the client skips it
                out["actions"] = {"upload": {"href": f"{self._endpoint()}/_lfs/{obj['oid']}"}}
            objects.append(out)
        # "basic" transfer on purpose: this server does not speak Xet or multipart.
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def h_lfs_upload(self, params: dict[str, str], body: bytes, **_: Any) -> None:
        oid = params["oid"]
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubApiError(400, "Uploaded content does not match its sha256")
        with self.hub._lock:
            self.hub.lfs_store[oid] = body
        self._send(200, b"", content_type="text/plain")

    def h_commit(self, params: dict[str, str], body: bytes, query: dict[str, list[str]], **_: Any) -> None:
        repo = self._repo(params, write=True)
        branch = unquote(params["rev"])
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubApiError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        # Validate everything first and build the new tree aside: a failing commit changes nothing.
        with self.hub._lock:
            if branch not in repo.branches:
                raise HubApiError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent = header.get("parentCommit")
            if parent is not None and not head.oid.startswith(parent):
                raise HubApiError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    files[path] = self.hub._store(path, data, lfs=False)
                elif key == "lfsFile":
                    sha = value["oid"]
                    if sha not in self.hub.lfs_store:
                        raise HubApiError(422, f"LFS object {sha} for {path} was never uploaded")
                    files[path] = StoredFile(size=len(self.hub.lfs_store[sha]), lfs_sha256=sha,
                                             oid=git_blob_sha1(_lfs_pointer(sha, len(self.hub.lfs_store[sha]))))
                elif key == "deletedFile":
                    if path not in files:
                        raise HubApiError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                else:
                    raise HubApiError(400, f"Unknown commit operation {key!r}")
            oid = self.hub._commit(repo, branch, head.oid, header.get("summary", ""),
                                   header.get("description", ""), files)
        self._json(200, {"commitUrl": f"{self._endpoint()}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                         "success": True, "pullRequestUrl": None})

    def h_resolve(self, params: dict[str, str], **_: Any) -> None:
        repo = self._repo(params)
        path = unquote(params["sub"])
        with self.hub._lock:
            commit = self.hub._resolve(repo, params["rev"])
            f = commit.files.get(path)
            if f is None:
                raise HubApiError(404, "Entry not found", "EntryNotFound")
            data = self.hub._read(f)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{f.oid}"', "Accept-Ranges": "bytes"}
        if f.lfs_sha256 is not None:
            # The Hub reports the LFS sha256 as the linked etag (what the client keys its cache blobs on).
            headers.update({"X-Linked-Etag": f'"{f.lfs_sha256}"', "X-Linked-Size": str(f.size)})
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET" and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, data[start:end + 1], headers, content_type="application/octet-stream")
            return
        self._send(200, data, headers, content_type="application/octet-stream")


def _front_matter(content: str) -> str | None:
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", content, flags=re.S)
    return m.group(1) if m else None


def validate_card_yaml(content: str) -> list[str]:
    """The subset of the Hub's model card metadata rules this server enforces (errors, empty if valid)."""
    yaml_text = _front_matter(content)
    if yaml_text is None:
        return []  # the Hub accepts a README without metadata (with a warning)
    try:
        data = yaml.safe_load(yaml_text)
    except yaml.YAMLError as err:
        return [f"Invalid YAML: {err}"]
    if data is None:
        return []
    if not isinstance(data, dict):
        return ["Metadata must be a YAML mapping"]
    errors = []
    relation = data.get("base_model_relation")
    if relation is not None and relation not in ALLOWED_BASE_MODEL_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {", ".join(ALLOWED_BASE_MODEL_RELATIONS)}')
    if relation is not None and "base_model" not in data:
        errors.append('"base_model_relation" requires "base_model"')
    base = data.get("base_model")
    if base is not None and not (isinstance(base, str) or (isinstance(base, list) and all(isinstance(b, str) for b in base))):
        errors.append('"base_model" must be a string or a list of strings')
    for key in ("tags", "datasets", "language", "metrics"):
        value = data.get(key)
        if value is not None and not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            errors.append(f'"{key}" must be a string or a list of strings')
    lic = data.get("license")
    if lic is not None and not (isinstance(lic, str) and re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", lic)):
        errors.append('"license" must be a license identifier such as "apache-2.0" or "other"')
    if lic == "other" and "license_name" not in data:
        errors.append('"license: other" requires "license_name"')
    for key in ("library_name", "pipeline_tag"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    return errors


def quote_repo(repo_id: str) -> str:
    return quote(repo_id, safe="/")


_DOWNLOAD_SCRIPT = """
import sys, torch
if sys.argv[3] == "1":
    import hf_prune  # noqa: F401
from transformers import AutoModelForCausalLM
repo, out = sys.argv[1], sys.argv[2]
ids = torch.tensor(eval(sys.argv[4]))
token = sys.stdin.read() or None  # a private repo's token never goes on the command line
logits = {}
for rev in sys.argv[5:]:
    model = AutoModelForCausalLM.from_pretrained(repo, revision=rev, token=token).eval()
    with torch.no_grad():
        logits[rev] = model(ids).logits
torch.save(logits, out)
"""


def download_logits(hub: "LocalHub", repo: str, revisions: list[str], ids: list[list[int]], workdir,
                    *, token: str = "", with_hf_prune: bool = False):
    """Load each revision with ``AutoModelForCausalLM.from_pretrained`` from the local Hub in a fresh process
    (its own ``HF_HOME``, endpoint pointed at ``hub``) and return ``(logits per revision, the process)``."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    out = Path(workdir) / "downloaded_logits.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(Path(workdir) / "hf_home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    proc = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD_SCRIPT, repo, str(out), "1" if with_hf_prune else "0", repr(ids), *revisions],
        input=token, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out), proc
