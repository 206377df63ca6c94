"""Files and folders that appear complete or not at all, with the permissions the user's umask gives.

Every write of the package that a reader could see half-done (plans, run state, the token cache, demo text,
checkpoint folders) goes through :func:`atomic_file` or :func:`atomic_dir`: the content is written under a
temporary sibling name and renamed into place. ``tempfile`` creates those with mode 0600/0700; they are given
the mode an ordinary ``open()``/``mkdir()`` would have, so a serving account can read what hf-prune saved.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError, OutputNotWritableError

__all__ = ["cache_dir", "check_output_dir", "check_writable", "atomic_file", "write_text_atomic", "atomic_dir"]


def cache_dir() -> Path:
    """Where hf_prune keeps converted assets and tokenised data.

    ``$HF_PRUNE_CACHE`` if set, else ``$XDG_CACHE_HOME/hf_prune``, else ``~/.cache/hf_prune``.
    """
    if os.environ.get("HF_PRUNE_CACHE"):
        return Path(os.environ["HF_PRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hf_prune"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the permissions of a normally created file."""
    mask = _umask()
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a non-empty existing folder unless ``overwrite``, or one that cannot be written; call it before any
    expensive work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{path} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    return check_writable(path, folder=True)


def check_writable(path: str | os.PathLike, *, folder: bool) -> Path:
    """Refuse, before any work, a folder (``folder``) or file that could not be created or written at ``path``.

    The nearest existing folder on the way is tried for real (a scratch folder is created in it and removed): a
    permission, a read-only or virtual filesystem, or a file standing where a folder is needed all fail here, as
    they would after the work.

    Raises:
        OutputNotWritableError: naming the path and why.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        wanted, found = ("folder", "file") if folder else ("file", "folder")
        raise OutputNotWritableError(f"{path} is a {found}; a {wanted} is needed there.")
    base = path if folder and path.is_dir() else path.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise OutputNotWritableError(f"{path} cannot be created: {base} is a file, not a folder.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hf-prune-probe-", dir=base))
    except OSError as err:
        raise OutputNotWritableError(f"{path} cannot be written: {base} refuses new files "
                                     f"({err.strerror or type(err).__name__}).") from None
    return path


def atomic_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it to ``path``.

    A crash or error mid-write leaves the previous file (or none), never a truncated one; concurrent writers
    each use their own temporary name.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _publish_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_file` for UTF-8 text."""
    return atomic_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``path`` only if the block finishes.

    A crash or error part-way leaves ``path`` as it was: never a half-written folder under the final name.
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        _publish_mode(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
