"""Measure what image representations retain, by inverting them.

All logic of the workflow lives in this package; ``python -m pipeline --help``
lists the commands the Snakemake rules call.
"""

__version__ = "0.1.0"


def code_commit() -> str:
    """The git commit of the code that runs (``-dirty`` when it has uncommitted
    changes); "" outside a git checkout (an installed wheel). Recorded with the
    version in every store and model."""
    global _COMMIT
    if _COMMIT is None:
        import subprocess
        from pathlib import Path

        here = Path(__file__).resolve().parent
        try:
            run = lambda *a: subprocess.run(["git", "-C", str(here), *a], capture_output=True, text=True,  # noqa: E731
                                            timeout=10)
            head = run("rev-parse", "HEAD")
            _COMMIT = head.stdout.strip() if head.returncode == 0 else ""
            if _COMMIT and run("status", "--porcelain", "--untracked-files=no", "--", str(here)).stdout.strip():
                _COMMIT += "-dirty"
        except (OSError, subprocess.SubprocessError):
            _COMMIT = ""
    return _COMMIT


_COMMIT: str | None = None
