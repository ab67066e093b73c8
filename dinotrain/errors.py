"""Mistakes a user can fix, and how the console script reports them: one line, exit 2.

`UserError` is the base of every error whose message already names the thing and the fix
(`ConfigError`, `DataError`, `SpecError` derive from it). `describe` also turns the OS's own
file errors into such a line. Anything else is a bug and keeps its traceback; `--debug` or
DINOTRAIN_DEBUG=1 shows the traceback of user errors too.

This module imports nothing of dinotrain, so every package can raise `UserError` from it.
"""

from __future__ import annotations

import errno
import os

DEBUG_ENV = "DINOTRAIN_DEBUG"


class UserError(Exception):
    """A mistake in the user's input (file, folder, option): the message is one line naming it and the fix."""


def debug_requested(argv_flag: bool = False) -> bool:
    """--debug on the command line, or DINOTRAIN_DEBUG set to anything but '', 0, false, no."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return argv_flag or env not in ("", "0", "false", "no")


# what to do about an OS error on a path the user named
_OS_FIXES = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EISDIR: "this is a folder: give a file",
    errno.EEXIST: "something is already there: choose another path",
    errno.EACCES: "not allowed here: fix the permissions or choose another path",
    errno.EPERM: "not allowed here: fix the permissions or choose another path",
    errno.EROFS: "this file system is read-only: choose another path",
    errno.ENOSPC: "the disk is full: free space or choose another path",
}

# raised by dinotrain itself with a message (no errno): e.g. "weights file X does not exist"
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)

# Python-API advice inside messages of dinotrain.models.convert, in the words of the CLI and config
_CLI_WORDING = {
    "(pass strict=False to load what matches)":
        "(the weights are another architecture: set model.arch, model.patch_size, model.num_register_tokens "
        "and model.ffn to the checkpoint's, or leave model.pretrained unset)",
}


def _raised_in(exc: BaseException, module: str) -> bool:
    """True when the innermost frame of `exc`'s traceback runs code of `module`."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__") == module


def describe(exc: BaseException) -> str | None:
    """The one-line message for a user-fixable error, or None for a bug (keep the traceback)."""
    if isinstance(exc, UserError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.errno in _OS_FIXES:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{where}: {exc.strerror or os.strerror(exc.errno)}: {_OS_FIXES[exc.errno]}"
    if isinstance(exc, _PATH_ERRORS) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0].splitlines()[0]  # raised by our code with a message that names the path
    if isinstance(exc, ValueError) and _raised_in(exc, "dinotrain.models.convert"):
        # convert's ValueErrors describe the user's weights (shapes, naming), never internal state
        msg = str(exc).splitlines()[0]
        for api, cli in _CLI_WORDING.items():
            msg = msg.replace(api, cli)
        return msg
    return None
