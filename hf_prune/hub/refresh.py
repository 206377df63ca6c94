"""Replace the remote-code files of a published pruned model, branch by branch, with this version's.

Each branch whose files differ gets one atomic commit that changes only those files (``create_commit`` with the
branch head as parent: it fails rather than overwrite a concurrent change). Branches that do not hold a pruned
checkpoint, or whose files are current, are left alone.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from ..errors import HubError, PushArgumentError, PushIncompleteError
from ..modeling import MODEL_TYPES, pruned_model_type, shipped_files
from .push import PushResult, _Pusher, _scrubbed_logs, _status_code, check_repo_id, resolve_token

__all__ = ["refresh_code"]

logger = logging.getLogger(__name__)

COMMIT_MESSAGE = "Refresh the modeling code (hf-prune)"


def refresh_code(
    repo_id: str,
    *,
    branches: list[str] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    max_retries: int = 3,
    backoff_s: float = 1.0,
) -> list[PushResult]:
    """Commit this version's remote-code files to every branch of ``repo_id`` that holds a pruned checkpoint.

    Args:
        repo_id: ``"namespace/name"`` of a repo written by hf-prune.
        branches: the branches to refresh (default: all of them; ``main`` last).
        token, endpoint, max_retries, backoff_s: as for :func:`~hf_prune.hub.push_pruned_folders`.

    Returns:
        One :class:`~hf_prune.hub.PushResult` per commit made (a branch already current gets none).

    Raises:
        PushArgumentError: a bad repo id, or a requested branch that does not exist (before any commit).
        HubAuthError: the token is missing or refused.
        ModelLoadError: a requested branch does not hold a pruned checkpoint, or holds a newer format.
        PushIncompleteError: a commit failed; lists the branches that were refreshed.
    """
    check_repo_id(repo_id)
    from huggingface_hub import HfApi

    secret = resolve_token(token)
    pusher = _Pusher(api=HfApi(endpoint=endpoint, token=token), repo_id=repo_id, secrets=[secret],
                     max_retries=max_retries, backoff_s=backoff_s)
    # Files are compared in a scratch download folder: nothing of this reaches the user's Hub cache.
    with _scrubbed_logs(pusher.secrets), tempfile.TemporaryDirectory(prefix="hf-prune-refresh-") as scratch:
        heads = _branch_heads(pusher, branches)
        plans = {branch: _stale_files(pusher, branch, head, scratch, explicit=branches is not None)
                 for branch, head in heads.items()}
        results: list[PushResult] = []
        for branch, stale in plans.items():
            if stale:
                results.append(_commit(pusher, branch, heads[branch], stale, results))
            else:
                logger.info("%s@%s: the modeling code is current.", repo_id, branch)
        return results


def _branch_heads(pusher: _Pusher, wanted: list[str] | None) -> dict[str, str]:
    """branch -> head commit, ``main`` last (as a push writes it)."""
    try:
        refs = pusher._call("list branches", lambda: pusher.api.list_repo_refs(pusher.repo_id))
    except HubError:
        raise
    except Exception as err:
        raise pusher._hub_error("list branches", err) from None
    heads = {ref.name: ref.target_commit for ref in refs.branches}
    if wanted is not None:
        unknown = sorted(set(wanted) - set(heads))
        if unknown:
            raise PushArgumentError(f"{pusher.repo_id!r} has no branch {unknown}; it has {sorted(heads)}.")
        heads = {name: heads[name] for name in wanted}
    return dict(sorted(heads.items(), key=lambda item: (item[0] == "main", item[0])))


def _read(pusher: _Pusher, name: str, head: str, scratch: str) -> str | None:
    """A file's text at commit ``head``; ``None`` where the commit has no such file."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = pusher._call(f"download {name}", lambda: pusher.api.hf_hub_download(pusher.repo_id, name,
                                                                                      revision=head, cache_dir=scratch))
    except EntryNotFoundError:
        return None
    except HubError:
        raise
    except Exception as err:
        raise pusher._hub_error(f"download {name}", err) from None
    return Path(path).read_text(encoding="utf-8")


def _stale_files(pusher: _Pusher, branch: str, head: str, scratch: str, *, explicit: bool) -> dict[str, str]:
    """The remote-code files of ``branch`` that differ from this version's (name -> text)."""
    config = _read(pusher, "config.json", head, scratch)
    model_type = json.loads(config).get("model_type") if config else None
    if model_type not in MODEL_TYPES and not explicit:
        logger.info("%s@%s holds no pruned checkpoint; left alone.", pusher.repo_id, branch)
        return {}
    pruned_model_type(json.loads(config or "{}"), f"{pusher.repo_id}@{branch}")  # refuses other types, newer formats
    return {name: text for name, text in shipped_files(model_type).items()
            if _read(pusher, name, head, scratch) != text}


def _commit(pusher: _Pusher, branch: str, head: str, stale: dict[str, str], landed: list[PushResult]) -> PushResult:
    from huggingface_hub import CommitOperationAdd

    def commit() -> PushResult:
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=text.encode("utf-8"))
                      for name, text in stale.items()]
        info = pusher.api.create_commit(pusher.repo_id, operations, commit_message=COMMIT_MESSAGE,
                                        commit_description="Files: " + ", ".join(stale), revision=branch,
                                        parent_commit=head)
        return PushResult(branch=branch, repo_url=str(info.repo_url), commit_id=info.oid, commit_url=info.commit_url)

    try:
        result = pusher._call(f"commit to branch {branch!r}", commit)
    except Exception as err:
        done = ", ".join(r.branch for r in landed) or "none"
        raise PushIncompleteError(
            f"Refreshing the code of {pusher.repo_id!r} failed on branch {branch!r}: {pusher._msg(err)}. "
            f"Branches refreshed: {done}.", landed=landed, failed_branch=branch, status_code=_status_code(err),
        ) from None
    logger.info("Refreshed %s@%s (%s): %s", pusher.repo_id, branch, ", ".join(stale), result.commit_url)
    return result
