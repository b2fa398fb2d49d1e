"""Writing a file so that readers see the old bytes or the new ones, never half: `atomic_write`.

The bytes go to a temporary file in the destination's folder (same file system, so the final rename is atomic),
are flushed to disk, and the file is renamed over the destination. It gets the permissions `open()` would give
(0666 minus the umask), not the 0600 of `mkstemp` or of libraries that write by name (safetensors' `save_file`
does), so every file a run writes has the same mode and other users or hosts sharing the folder can read the
policy as they read the metrics.
"""

from __future__ import annotations

import contextlib
import os
import secrets

__all__ = ["atomic_write", "atomic_write_text", "default_file_mode"]


def default_file_mode() -> int:
    """The mode a plain `open(path, "w")` creates a file with: 0o666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path, *, binary: bool = False):
    """`with atomic_write(path) as (handle, temporary): ...` writes through `handle` (or to the path `temporary`,
    for libraries that take a file name), then renames into place; on an exception the temporary file is removed
    and `path` is untouched."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as in open()
    try:
        with os.fdopen(descriptor, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            yield handle, temporary
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, default_file_mode())  # a library may have re-created the file with its own mode
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_write(path) as (handle, _):
        handle.write(text)
