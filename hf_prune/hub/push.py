"""Publish pruned checkpoints to the Hugging Face Hub: one branch per sparsity level, ``main`` last.

:func:`push_pruned_folders` uploads each local folder to its own branch in **one atomic commit**
(``HfApi.create_commit`` with explicit operations: ``upload_folder`` may split a large upload into
several commits when ``hf_xet`` is installed), then commits the primary folder to ``main``. ``main`` is
written last so that a failure on any branch leaves it untouched.

The token is never logged, never put in an exception message and never written to disk: every
message that may come from ``huggingface_hub`` or the server is scrubbed, and original exceptions are
not chained (their response objects hold the request headers).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import (
    HubAuthError,
    HubError,
    PushArgumentError,
    PushIncompleteError,
    RepoExistsError,
)
from ..options import is_int, is_number

__all__ = ["PushResult", "push_pruned_folders", "resolve_token", "check_repo_id"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth retrying: rate limiting and server-side failures.
TRANSIENT_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})
#: Files of a fresh Hub repo: a repo holding only these counts as empty.
INITIAL_FILES = frozenset({".gitattributes"})
# Files and folders never uploaded: local caches and bytecode, not part of a checkpoint.
_SKIP_DIRS = frozenset({"__pycache__", ".git", ".cache", ".ipynb_checkpoints"})
_SKIP_SUFFIXES = (".pyc", ".pyo", ".lock", ".incomplete")

_BRANCH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_COMMIT_SHA_RE = re.compile(r"[0-9a-f]{40}")
# Looks like a Hugging Face token: scrubbed even when it is not the token in use.
_TOKEN_LIKE_RE = re.compile(r"hf_[A-Za-z0-9_-]{6,}")


@dataclass(frozen=True)
class PushResult:
    """One commit made by :func:`push_pruned_folders`.

    Attributes:
        branch: the branch the folder was committed to (``"main"`` for the primary copy).
        repo_url: URL of the repo on the Hub.
        commit_id: 40-hex commit sha; pin it with ``from_pretrained(..., revision=commit_id)``.
        commit_url: URL of the commit on the Hub.
    """

    branch: str
    repo_url: str
    commit_id: str
    commit_url: str


def push_pruned_folders(
    repo_id: str,
    folders: Mapping[str, str | os.PathLike[str]],
    *,
    primary: str,
    token: str | None = None,
    private: bool = False,
    overwrite: bool = False,
    endpoint: str | None = None,
    commit_message: str | None = None,
    max_retries: int = 3,
    backoff_s: float = 1.0,
) -> list[PushResult]:
    """Push each pruned folder to its own branch of ``repo_id``, then the ``primary`` one to ``main``.

    Args:
        repo_id: ``"namespace/name"`` of the model repo (created if missing).
        folders: branch name (e.g. ``"sparsity-30"``) -> local folder holding a saved checkpoint
            (``config.json``, ``*.safetensors``, tokenizer, remote-code ``.py`` files, plan/eval JSON,
            ``README.md``, ...). Each folder lands on its branch in a single commit.
        primary: the key of ``folders`` whose content also goes to ``main`` (one more commit, made last).
        token: Hub token; defaults to ``HF_TOKEN``, then the stored login. Never logged or saved.
        private: create the repo private (ignored when the repo exists already).
        overwrite: allow pushing to a repo that already has content. Files of an existing branch that
            are not in the new folder are deleted in the same commit, so each branch equals its folder.
        endpoint: Hub URL (defaults to ``HF_ENDPOINT`` / https://huggingface.co).
        commit_message: commit title; defaults to ``"Upload pruned model (<branch>)"``.
        max_retries: how many times a step failing with a transient error (5xx, 429, connection
            error) is retried, with exponential backoff starting at ``backoff_s`` seconds.
        backoff_s: first backoff delay in seconds (doubled at each retry, capped at 30 s).

    Returns:
        One :class:`PushResult` per branch in ``folders`` order, then one for ``main``.

    Raises:
        PushArgumentError: invalid arguments (raised before any network call).
        HubAuthError: the token is missing or refused (not retried).
        RepoExistsError: the repo already has content and ``overwrite`` is false.
        PushIncompleteError: a branch commit failed; lists the branches that landed. ``main`` unchanged.
        HubError: any other Hub failure before branches were written.
    """
    plans = _validate_arguments(repo_id, folders, primary, max_retries, backoff_s, commit_message)

    from huggingface_hub import HfApi

    # The effective token (explicit, HF_TOKEN or stored login) is what must never leak: scrub it.
    secret = resolve_token(token)
    pusher = _Pusher(
        api=HfApi(endpoint=endpoint, token=token),
        repo_id=repo_id,
        secrets=[secret],
        max_retries=max_retries,
        backoff_s=backoff_s,
    )
    with _scrubbed_logs(pusher.secrets):
        return pusher.push(
            plans, primary=primary, private=private, overwrite=overwrite, commit_message=commit_message
        )


# ---------------------------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class _FolderPlan:
    branch: str
    folder: Path
    files: tuple[str, ...]  # POSIX paths relative to folder, sorted


def _validate_arguments(
    repo_id: object,
    folders: object,
    primary: object,
    max_retries: object,
    backoff_s: object,
    commit_message: object,
) -> list[_FolderPlan]:
    check_repo_id(repo_id)
    if not isinstance(folders, Mapping) or not folders:
        raise PushArgumentError("folders must be a non-empty mapping of branch name -> local folder.")
    if not is_int(max_retries) or max_retries < 0:
        raise PushArgumentError(f"max_retries must be an int >= 0, got {max_retries!r}.")
    if not is_number(backoff_s) or backoff_s < 0:
        raise PushArgumentError(f"backoff_s must be a number >= 0, got {backoff_s!r}.")
    if commit_message is not None and (not isinstance(commit_message, str) or not commit_message.strip()):
        raise PushArgumentError("commit_message must be a non-empty string or None.")

    plans = []
    for branch, folder in folders.items():
        _validate_branch(branch)
        path = Path(folder)
        if not path.is_dir():
            raise PushArgumentError(f"Folder for branch {branch!r} does not exist or is not a directory: {path}")
        if not (path / "config.json").is_file():
            raise PushArgumentError(
                f"Folder for branch {branch!r} has no config.json: {path}. Save the pruned model there first "
                "(model.save_pretrained(folder))."
            )
        plans.append(_FolderPlan(branch=branch, folder=path, files=tuple(_list_files(path))))
    if primary not in folders:
        raise PushArgumentError(f"primary must be one of the branches {sorted(folders)}, got {primary!r}.")
    return plans


def check_repo_id(repo_id: object) -> str:
    """``repo_id`` as ``namespace/name`` with huggingface_hub's own rules, else :class:`PushArgumentError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if not isinstance(repo_id, str) or repo_id.count("/") != 1:
            raise HFValidationError("it needs exactly one '/' between namespace and name")
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushArgumentError(f"repo_id must look like 'namespace/model-name', got {repo_id!r}: "
                                f"{' '.join(str(err).split())}") from None
    return repo_id


def _check_token_argument(token: object) -> None:
    if token is not None and (not isinstance(token, str) or not token.strip()):
        # Do not echo the value: it may be a (malformed) secret.
        raise PushArgumentError("token must be a non-empty string or None.")


def resolve_token(token: str | None) -> str:
    """The token a push would use (``token``, else ``HF_TOKEN``, else the stored login), checked offline.

    Raises:
        PushArgumentError: ``token`` is given but empty or not a string.
        HubAuthError: no token is available at all.
    """
    from huggingface_hub.utils import get_token

    _check_token_argument(token)
    found = token if token is not None else get_token()
    if not found:
        raise HubAuthError("pushing needs a Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass token=...")
    return found


def _validate_branch(branch: object) -> None:
    if not isinstance(branch, str) or not _BRANCH_RE.fullmatch(branch):
        raise PushArgumentError(
            f"Invalid branch name {branch!r}: use letters, digits, '.', '_' or '-' (e.g. 'sparsity-30'), "
            "starting with a letter or digit, at most 100 characters."
        )
    if branch == "main":
        raise PushArgumentError("'main' cannot be a key of folders: it receives the folder named by primary.")
    if ".." in branch or branch.endswith((".", ".lock")) or branch.startswith("refs"):
        raise PushArgumentError(f"Invalid branch name {branch!r}: not a valid git branch name.")
    if _COMMIT_SHA_RE.fullmatch(branch):
        # A 40-hex branch would be read as a commit id by revision=...
        raise PushArgumentError(f"Invalid branch name {branch!r}: it looks like a commit sha.")


def _list_files(folder: Path) -> list[str]:
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]) or not path.is_file():
            continue
        if rel.name in _SKIP_DIRS or rel.name.endswith(_SKIP_SUFFIXES) or rel.name == ".DS_Store":
            continue
        files.append(rel.as_posix())
    return files


# ---------------------------------------------------------------------------------------------- errors
def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return _TOKEN_LIKE_RE.sub("hf_***", text)


def _status_code(err: BaseException) -> int | None:
    """HTTP status of a failed Hub call (``None`` for a connection error or a non-HTTP failure)."""
    from huggingface_hub.errors import HfHubHTTPError

    response = err.response if isinstance(err, HfHubHTTPError) else None
    return response.status_code if response is not None else None


def _is_transient(err: BaseException) -> bool:
    """Worth retrying: rate limiting, a server-side failure, or the connection itself."""
    import httpx2

    status = _status_code(err)
    if status is not None:
        return status in TRANSIENT_STATUS_CODES
    return isinstance(err, (httpx2.TransportError, ConnectionError, TimeoutError))


def _is_auth_error(err: BaseException) -> bool:
    from huggingface_hub.errors import LocalTokenNotFoundError

    return isinstance(err, LocalTokenNotFoundError) or _status_code(err) in (401, 403)


class _ScrubFilter(logging.Filter):
    """Rewrites log records of the HTTP stack so that the token cannot appear in them.

    huggingface_hub and httpx2 do not log request headers, but at DEBUG level httpcore2 logs response
    headers, and a server error message may echo what it received.
    """

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        scrubbed = _scrub(message, self.secrets)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


_SCRUBBED_LOGGER_PREFIXES = ("huggingface_hub", "httpx2", "httpcore2", "httpx", "httpcore", "hf_xet", __name__)


@contextmanager
def _scrubbed_logs(secrets: list[str]):
    """Attach :class:`_ScrubFilter` to the loggers of the HTTP stack for the duration of a push.

    Logger filters only see records created on that very logger (not those propagated from children),
    so the filter goes on every known logger of those packages.
    """
    for name in _SCRUBBED_LOGGER_PREFIXES:
        logging.getLogger(name)
    for name in ("httpcore2.http11", "httpcore2.connection", "httpcore2.http2", "httpcore2.proxy"):
        logging.getLogger(name)
    scrub_filter = _ScrubFilter(secrets)
    loggers = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in {p.split(".")[0] for p in _SCRUBBED_LOGGER_PREFIXES}
    ]
    for log in loggers:
        log.addFilter(scrub_filter)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(scrub_filter)


# ---------------------------------------------------------------------------------------------- pushing
class _Pusher:
    """One push: holds the client, the secrets to scrub and the retry policy."""

    def __init__(self, *, api, repo_id: str, secrets: list[str], max_retries: int, backoff_s: float) -> None:
        self.api = api
        self.repo_id = repo_id
        self.secrets = secrets
        self.max_retries = max_retries
        self.backoff_s = backoff_s

    def _msg(self, err: BaseException) -> str:
        first = str(err).strip().splitlines()
        text = f"{type(err).__name__}: {' '.join(line.strip() for line in first if line.strip())[:500]}"
        return _scrub(text, self.secrets)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` under the one retry policy of a push (transient errors, exponential backoff capped at 30 s);
        auth errors become :class:`HubAuthError` at once, other errors propagate."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        def log_retry(state) -> None:
            logger.warning("Transient error while trying to %s on %s (%s); retry %d/%d in %.1fs.", what, self.repo_id,
                           self._msg(state.outcome.exception()), state.attempt_number, self.max_retries,
                           state.next_action.sleep)

        retrying = Retrying(stop=stop_after_attempt(self.max_retries + 1), reraise=True, before_sleep=log_retry,
                            wait=wait_exponential(multiplier=self.backoff_s, max=30.0),
                            retry=retry_if_exception(lambda err: not _is_auth_error(err) and _is_transient(err)))
        try:
            return retrying(fn)
        except Exception as err:
            if _is_auth_error(err):
                status = _status_code(err)
                reason = f"HTTP {status}" if status else "no token found"
                raise HubAuthError(
                    f"The Hub refused the token while trying to {what} on {self.repo_id!r} ({reason}). "
                    "Check that the token is valid and has write access to that namespace: pass token=..., "
                    "set HF_TOKEN or run `hf auth login`."
                ) from None
            raise

    def _hub_error(self, what: str, err: BaseException) -> HubError:
        return HubError(f"Could not {what} on {self.repo_id!r}: {self._msg(err)}")

    def push(
        self, plans: list[_FolderPlan], *, primary: str, private: bool, overwrite: bool, commit_message: str | None
    ) -> list[PushResult]:
        # 1. Token check first: a bad token fails fast with a clear message instead of a 401 deep in a commit.
        try:
            user = self._call("check the token", lambda: self.api.whoami())
        except HubError:
            raise
        except Exception as err:
            raise self._hub_error("check the token", err) from None
        logger.info("Pushing %d folder(s) to %s as %s.", len(plans), self.repo_id, user.get("name", "?"))

        # 2. Repo: create it, or check that the existing one may be written to.
        main_head, repo_url = self._prepare_repo(private=private, overwrite=overwrite)

        # 3. One commit per branch, main last.
        results: list[PushResult] = []
        by_branch = {plan.branch: plan for plan in plans}
        for plan in plans:
            message = commit_message or f"Upload pruned model ({plan.branch})"
            results.append(self._commit_folder(plan, plan.branch, message, start_point=main_head, landed=results))
        message = commit_message or f"Upload pruned model ({primary}) to main"
        results.append(self._commit_folder(by_branch[primary], "main", message, start_point=main_head,
                                           landed=results))
        for result in results:
            logger.info("Pushed %s@%s: %s", self.repo_id, result.branch, result.commit_url)
        return results

    def _prepare_repo(self, *, private: bool, overwrite: bool) -> tuple[str, str]:
        """Create the repo if needed; returns (main head commit, repo URL)."""
        try:
            url = self._call("create the repo",
                             lambda: self.api.create_repo(self.repo_id, private=private, exist_ok=True))
            repo_url = str(url)
        except HubError:
            raise
        except Exception as err:
            raise self._hub_error("create the repo", err) from None

        try:
            refs = self._call("list branches", lambda: self.api.list_repo_refs(self.repo_id))
            branches = {ref.name: ref.target_commit for ref in refs.branches}
            main_files = {
                entry.path
                for entry in self._call(
                    "list files", lambda: list(self.api.list_repo_tree(self.repo_id, revision="main", recursive=True))
                )
                if hasattr(entry, "size")  # files only, not folders
            }
        except HubError:
            raise
        except Exception as err:
            raise self._hub_error("read the repo", err) from None

        # A branch pointing at main's initial commit (left by a push that failed early) is not content.
        has_content = bool(main_files - INITIAL_FILES) or any(
            head != branches.get("main") for name, head in branches.items() if name != "main"
        )
        if has_content and not overwrite:
            raise RepoExistsError(
                f"The repo {self.repo_id!r} already has content (branches: {sorted(branches)}). "
                "Pass overwrite=True to push into it anyway, or choose another repo_id."
            )
        if has_content:
            logger.info("Repo %s has content; it will be overwritten.", self.repo_id)
        if "main" not in branches:
            raise HubError(f"The repo {self.repo_id!r} has no 'main' branch.")
        return branches["main"], repo_url

    def _branch_head(self, branch: str) -> str | None:
        refs = self._call("list branches", lambda: self.api.list_repo_refs(self.repo_id))
        return next((ref.target_commit for ref in refs.branches if ref.name == branch), None)

    def _commit_folder(
        self, plan: _FolderPlan, branch: str, message: str, *, start_point: str, landed: list[PushResult]
    ) -> PushResult:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        try:
            head, stale = self._prepare_branch(plan, branch, start_point)
            push_id = uuid.uuid4().hex[:16]
            attempts = 0

            def commit() -> PushResult:
                nonlocal attempts
                attempts += 1
                if attempts > 1:
                    # The previous attempt may have landed with its answer lost (connection error): then the
                    # branch head is our commit, recognised by its push id. Do not commit twice.
                    landed_commit = self._find_landed_commit(branch, head, push_id)
                    if landed_commit is not None:
                        return landed_commit
                # Fresh operation objects per attempt: huggingface_hub mutates (and refuses to reuse) them.
                operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(plan.folder / rel))
                              for rel in plan.files]
                operations += [CommitOperationDelete(path_in_repo=rel) for rel in stale]
                info = self.api.create_commit(
                    self.repo_id,
                    operations,
                    commit_message=message,
                    commit_description=f"Pushed by hf-prune from folder '{plan.folder.name}' (push id {push_id}).",
                    revision=branch,
                    # Guards atomicity against a concurrent push: the commit fails if the branch moved.
                    parent_commit=head,
                )
                return PushResult(branch=branch, repo_url=str(info.repo_url), commit_id=info.oid,
                                  commit_url=info.commit_url)

            result = self._call(f"commit to branch {branch!r}", commit)
        except HubAuthError as err:
            if not landed:
                raise
            raise PushIncompleteError(self._incomplete_message(branch, str(err), landed), landed=landed,
                                      failed_branch=branch, status_code=401) from None
        except Exception as err:
            raise PushIncompleteError(
                self._incomplete_message(branch, self._msg(err), landed),
                landed=landed,
                failed_branch=branch,
                status_code=_status_code(err),
            ) from None
        return result

    def _prepare_branch(self, plan: _FolderPlan, branch: str, start_point: str) -> tuple[str | None, list[str]]:
        """The branch's head (the branch created from ``start_point`` when missing) and the files an earlier push
        left on it that the new folder does not have (deleted in the same commit)."""
        head = self._branch_head(branch)
        if head is None:
            self._call(
                f"create branch {branch!r}",
                lambda: self.api.create_branch(self.repo_id, branch=branch, revision=start_point, exist_ok=True),
            )
            head = self._branch_head(branch)
        remote = [
            entry.path
            for entry in self._call(
                "list files", lambda: list(self.api.list_repo_tree(self.repo_id, revision=branch, recursive=True))
            )
            if hasattr(entry, "size")
        ]
        return head, sorted(set(remote) - set(plan.files) - INITIAL_FILES)

    def _find_landed_commit(self, branch: str, parent: str | None, push_id: str) -> PushResult | None:
        current = self._branch_head(branch)
        if current is None or current == parent:
            return None
        commits = self.api.list_repo_commits(self.repo_id, revision=branch)
        if commits and push_id in f"{commits[0].title}\n{commits[0].message}":
            endpoint = self.api.endpoint.rstrip("/")
            logger.info("Commit to %s@%s had landed before the connection failed.", self.repo_id, branch)
            return PushResult(branch=branch, repo_url=f"{endpoint}/{self.repo_id}", commit_id=commits[0].commit_id,
                              commit_url=f"{endpoint}/{self.repo_id}/commit/{commits[0].commit_id}")
        return None

    def _incomplete_message(self, branch: str, reason: str, landed: list[PushResult]) -> str:
        if landed:
            done = ", ".join(f"{r.branch} (commit {r.commit_id})" for r in landed)
        else:
            done = "none"
        main_note = (
            "'main' was not changed."
            if branch != "main"
            else "'main' was not changed (its commit is the one that failed)."
        )
        return (
            f"Push to {self.repo_id!r} failed on branch {branch!r} after retries: {reason}. "
            f"Branches that landed: {done}. {main_note} Re-run with overwrite=True to retry."
        )
