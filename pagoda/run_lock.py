"""One writer per folder: a job that writes a run directory, a latent folder or a sample folder holds an exclusive
lock on it for as long as it runs.

The lock is `fcntl.flock` on `<folder>/.pagoda.lock`. The kernel releases it when the holder's process ends, however
it ends (exit, exception, SIGKILL), so a lock is never left stale by a crash and nothing has to be cleaned up. The
file itself stays; after taking the lock the holder writes who it is (pid, host, command) into it, so that a second
job is refused at once with a message naming the folder and the job that writes it.

Under MPI (or torchrun) the ranks of one job share the lock: rank 0 takes it and every other rank receives rank 0's
verdict, so the whole job starts or the whole job is refused. flock is advisory and node-local on some network
filesystems; a shared folder on such a filesystem is protected against jobs on the same node only.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys

from . import dist_util

LOCK_FILE = ".pagoda.lock"


class FolderLockedError(RuntimeError):
    """Another job is writing the folder."""


def lock_path(folder):
    return os.path.join(folder, LOCK_FILE)


def _holder_text():
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)})


def _describe_holder(path):
    try:
        with open(path) as f:
            holder = json.loads(f.read() or "null")
        return f"pid {holder['pid']} on {holder['host']}: {holder['command']}"
    except (OSError, ValueError, TypeError, KeyError):  # the holder has not written its name yet
        return "a job that has not yet recorded its pid"


def _acquire(folder, what):
    """The open file that holds the lock on `folder`; FolderLockedError naming the holder if another job has it."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(lock_path(folder), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot lock the {what} {folder}: {exc.strerror} ({lock_path(folder)}); "
                                 "check that the folder is writable") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderLockedError(
            f"the {what} {folder} is being written by another job ({_describe_holder(lock_path(folder))}); wait for "
            f"it to end or stop it, or use another folder. The lock ({lock_path(folder)}) is released by itself when "
            "that process ends, even by a crash") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_text().encode(), 0)
    return fd


@contextlib.contextmanager
def hold(folder, *, what="folder"):
    """Hold the lock of `folder` for the block, on rank 0 for every rank of the job (collective: every rank calls
    it). `what` names the folder in the refusal ("run directory", "latent folder", ...)."""
    fd, error = None, None
    if dist_util.is_main():
        try:
            fd = _acquire(folder, what)
        except (FolderLockedError, OSError) as exc:
            error = (type(exc).__name__, str(exc))
    error = dist_util.broadcast_object(error)
    if error is not None:
        raise (FolderLockedError if error[0] == "FolderLockedError" else OSError)(error[1])
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock
