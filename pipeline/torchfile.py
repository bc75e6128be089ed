"""Reading and writing ``torch.save`` files safely.

:func:`load_torch_file` reads with ``weights_only=True``: tensors, numbers,
strings and plain containers (dict, list, tuple) only, so a crafted file
cannot run code when it is loaded.  Whatever cannot be read so (a pickled
object, a damaged or truncated file) is refused with a :class:`ValueError`
naming the file and saying how to fix it.  :func:`save_torch_file` writes
atomically and names the file when the write fails (e.g. a full disk).
"""
from __future__ import annotations

import pickle
import zipfile

import torch

from pipeline.io import atomic_path

#: Lines of torch's weights_only message that are advice, not the reason.
_ADVICE = ("weights only load failed", "weights_only", "documentation of torch.load", "file an issue",
           "do it only if", "trusted source")


def _reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not any(a in ln.lower() for a in _ADVICE)]
    text = (useful or lines or [type(e).__name__])[0]
    return text if len(text) <= 300 else text[:300] + " ..."


def load_torch_file(path, *, what: str, fix: str = "", map_location="cpu"):
    """The contents of the ``torch.save`` file ``path`` (a ``what``, for messages),
    read with ``weights_only=True``.

    Raises :class:`FileNotFoundError` for a missing file and :class:`ValueError`
    (naming ``path``, ending with ``fix``) for a file that holds anything but
    tensors and plain containers, or that is damaged.
    """
    tail = f"; {fix}" if fix else ""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to load this {what}: it is not a file of tensors and plain containers "
            f"({_reason(e)}); nothing in it was run{tail}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError, TypeError,
            zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read this {what}, the file is damaged or truncated "
                         f"({type(e).__name__}: {_reason(e)}){tail}") from None


def save_torch_file(path, obj, *, fix: str = "") -> None:
    """``torch.save(obj)`` to ``path`` atomically; a failed write (a full disk, a
    quota) raises :class:`OSError` naming ``path`` and leaves no partial file."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as e:
        raise OSError(f"{path}: could not be written ({type(e).__name__}: {_reason(e)}); "
                      f"is the disk full?{(' ' + fix) if fix else ''}") from None
