"""Small file helpers shared by every stage: atomic writes, checksums, JSON,
caption sidecars."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)


def _temporary_name(name: str) -> re.Pattern:
    """The names :func:`atomic_path` gives the temporaries of the file ``name``
    (``tempfile.mkstemp``: ``.<name>.`` + 8 characters + ``.tmp``)."""
    return re.compile(r"\." + re.escape(name) + r"\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that an :func:`atomic_path` write of ``path`` left
    when its process was killed (``.<name>.XXXXXXXX.tmp`` beside it); return them.

    Every output has one writer at a time (Snakemake runs one job per output,
    and a command writes each of its outputs from one process), so a
    temporary of ``path`` that exists when a new write of ``path`` starts is
    the litter of a killed run.  Temporaries of other files are left alone.
    """
    path = Path(path)
    pattern = _temporary_name(path.name)
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if pattern.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.parent / name)
                removed.append(path.parent / name)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched, so
    a failed job never leaves a half-written output nor destroys an old one.
    Temporaries of ``path`` left by a killed process are removed first
    (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_caption_sidecar(path, caption: str) -> None:
    """``<path>.caption.txt`` beside an output file (read by the Snakemake report)."""
    write_text(f"{path}.caption.txt", (caption or "").strip() + "\n")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
