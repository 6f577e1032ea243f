"""An exclusive lock on a results store while it is written: ``{store}/.lock``; and the same
lock as a claim on any output while a command writes it: ``.{name}.claim`` beside it.

The lock file is created atomically (``O_CREAT | O_EXCL``) and holds the holder's pid, host,
process start time and a random token. While it is held, a second writer is refused with one
line naming the holder. A lock left by a process that is gone (same host, pid not running, or
the pid now belongs to a process started later) is removed and taken over automatically; a lock
of another host is never guessed about: the message says how to remove it by hand.

Removing a stale lock is itself guarded by a short-lived ``.lock.recover`` file (also created
with ``O_EXCL``), so that two processes that find the same stale lock cannot remove each
other's fresh one.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from .errors import PathvizError

LOCK_NAME = ".lock"
_RECOVER_SECONDS = 30.0  # a recovery guard older than this was left by a crash


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of stat, counted after "(comm)"


def _alive(pid: int, started: str | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _start_time(pid)
    return not (started and now and now != started)


class StoreLock:
    """``with StoreLock(folder):`` holds ``folder/.lock`` (the folder must exist); ``name``
    another lock file in that folder, ``what`` the locked thing as messages name it."""

    def __init__(self, folder: str | os.PathLike, *, name: str = LOCK_NAME, what: str = ""):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what or f"store {self.folder}"
        self.token = uuid.uuid4().hex
        self.held = False

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> StoreLock:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _start_time(os.getpid()),
            "token": self.token,
            "time": time.time(),
        }
        for _ in range(3):  # a stale lock is removed, then taken on the next try
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read(self.path)
                if holder is not None and not self._stale(holder):
                    raise PathvizError(self._held_message(holder)) from None
                self._remove_stale(holder)
                continue
            except OSError as exc:
                raise PathvizError(
                    f"{self.folder}: cannot create its lock file ({exc.strerror})"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            return self
        raise PathvizError(
            f"{self.what} is being locked and unlocked by other processes; try again"
        )

    def release(self) -> None:
        """Removes the lock file if it is still this lock's (a store removed and recreated
        meanwhile has another one)."""
        if not self.held:
            return
        self.held = False
        holder = self._read(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ stale locks

    @staticmethod
    def _read(path: Path) -> dict | None:
        """The lock's record; {} for a file that is not one (being written, or damaged);
        None when there is no file."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            record = json.loads(text)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _stale(self, holder: dict) -> bool:
        if not holder:  # empty: its writer is between open and write, or died there
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return True
            return age > _RECOVER_SECONDS
        if holder.get("host") != socket.gethostname():
            return False
        try:
            pid = int(holder.get("pid"))
        except (TypeError, ValueError):
            return True
        return not _alive(pid, holder.get("started"))

    def _remove_stale(self, seen: dict | None) -> None:
        """Removes the lock file when it still holds the stale record ``seen``."""
        if seen is None:
            return  # gone already
        guard = self.path.with_name(self.path.name + ".recover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > _RECOVER_SECONDS:
                    guard.unlink(missing_ok=True)
            except OSError:
                pass
            time.sleep(0.05)  # someone else is recovering: look again
            return
        os.close(fd)
        try:
            if self._read(self.path) == seen:
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def _held_message(self, holder: dict) -> str:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        where = "" if host == socket.gethostname() else f" on host {host}"
        return (
            f"{self.what} is being written by process {pid}{where}; "
            f"wait or remove {self.path} if that process is gone"
        )


CLAIM_SUFFIX = ".claim"


def claim_path(output: str | os.PathLike) -> Path:
    """The claim file of an output: hidden, beside it (same folder, same file system)."""
    output = Path(output)
    return output.with_name(f".{output.name}{CLAIM_SUFFIX}")


class OutputClaim:
    """One writer per output: ``.{name}.claim`` beside ``output``, created atomically with
    the holder's pid and host (a :class:`StoreLock`), held while the command runs. Checking
    that an output does not exist and replacing it at the end is not enough: two commands
    started together both pass the check and both write. A second writer is refused in one
    line naming the output; a claim left by a dead process is taken over. Folders made to hold
    the claim are removed again on release when nothing else was put in them."""

    def __init__(self, output: str | os.PathLike, label: str = ""):
        # The folder's real path (one folder reached by two names has one claim), the output's
        # own name: a symlinked output is replaced as a name, so its name is what is claimed.
        absolute = Path(os.path.abspath(output))
        self.output = absolute.parent.resolve() / absolute.name
        self.claim = claim_path(self.output)
        what = f"{label} {output}" if label else str(output)
        self.lock = StoreLock(self.output.parent, name=self.claim.name, what=what)
        self._made: list[Path] = []

    def __enter__(self) -> OutputClaim:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> OutputClaim:
        missing, parent = [], self.output.parent
        while not parent.exists() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        try:
            for folder in reversed(missing):
                folder.mkdir(exist_ok=True)
                self._made.append(folder)
            self.lock.acquire()
        except OSError as exc:
            self._remove_made()
            raise PathvizError(f"cannot write {self.output}: {exc.strerror or exc}") from None
        except BaseException:
            self._remove_made()
            raise
        return self

    def release(self) -> None:
        self.lock.release()
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in reversed(self._made):  # innermost first; one in use stays
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []
