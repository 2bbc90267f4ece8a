"""Who owns a run: its heartbeat, when another process may take it over, and the fence that
stops a process whose run was taken over from logging into it again.

A live run's heartbeat tag is "<unix time> <host> <pid> <process start>", refreshed from a
background thread. A run is taken over only when its process is gone: on the same host that
is known for certain, from a lock file the process holds while it has the run open (in
`MLPRUNES_CHECKPOINT_DIR/.owners/`; failing that, from its pid and start time), so a process
that is paused (SIGSTOP) or stuck stays the owner however old its heartbeat, and one that let
the run go (a lost store) or died does not. On another host only a heartbeat silent for three beats says so, and a process
there that was only paused may come back to find its run owned by someone else: it checks its
ownership before each log (`fence`) and stops, without touching the run, when it lost it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlprunes.errors import StageError
from mlprunes.stages import kept

TAG_HEARTBEAT = "mlprunes.heartbeat"   # "<unix time> <host> <pid> <process start>" of a live run
_RESUMING = " resuming"   # the note on a heartbeat written by a process taking a run over
# How long a process taking over a run waits before reading its heartbeat back: longer than two
# tag writes that crossed could land apart.
TAKEOVER_SETTLE_SECONDS = 2.0


class RunTakenOver(StageError):
    """This process's run is now another process's: it stops without logging into it."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


def heartbeat_seconds() -> float:
    """How often a live run says so (MLPRUNES_HEARTBEAT_SECONDS, default 30); a run silent for
    three times as long, on another host, is taken for dead."""
    return float(os.environ.get("MLPRUNES_HEARTBEAT_SECONDS", "30"))


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, from /proc), or None where that
    cannot be read: with the pid, it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count from after it.
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def beat(note: str = "") -> str:
    pid = os.getpid()
    return f"{time.time():.1f} {socket.gethostname()} {pid} {process_start(pid) or '-'}{note}"


def _owner(value: str) -> tuple[float | None, str | None, int | None, str | None]:
    """(time, host, pid, process start) of a heartbeat; None for what it does not say (a
    beat written before process starts were recorded has three fields)."""
    parts = value.replace(_RESUMING, "").split()
    when = float(parts[0]) if parts else None
    host = parts[1] if len(parts) > 1 else None
    pid = int(parts[2]) if len(parts) > 2 else None
    start = parts[3] if len(parts) > 3 and parts[3] != "-" else None
    return when, host, pid, start


def _running_here(pid: int, start: str | None) -> bool:
    """Whether process `pid` of this host is running, and is the one that wrote the beat."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        pass
    now = process_start(pid)
    return start is None or now is None or now == start


# -- ownership on this host: a lock held while a process has the run open ------------------------

def _lock_path(run_id: str) -> Path:
    return kept.root() / ".owners" / f"{run_id}.lock"


@contextmanager
def _owning(run_id: str) -> Iterator[None]:
    """Hold the run's lock file for the body: a process that has the run open holds it, paused
    or not, and only its end (or death) lets it go. The file names its process (pid and start)
    and is made under its lock and then moved into place, so that no one sees it unlocked
    before it is held."""
    path, fd = _lock_path(run_id), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, made = tempfile.mkstemp(dir=path.parent, prefix=f".{run_id}.")
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, _process().encode())
        os.replace(made, path)
    except OSError:   # no folder to share: the pid and its heartbeat tell instead
        if fd is not None:
            os.close(fd)
        fd = None
    clean = False
    try:
        yield
        clean = True
    finally:
        if fd is not None:
            # After a clean end the run is finished at once: no one needs the file. Otherwise
            # (a stop, a lost store) it stays, unlocked: the run's process let it go.
            with suppress(OSError):
                if clean and os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
            os.close(fd)


def _process(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid} {process_start(pid) or '-'}"


def _lock_state(run_id: str) -> tuple[bool, str] | None:
    """(held, the process the lock file names) for the run's lock on this host; None where no
    lock file tells (a run opened by another user, or before locks)."""
    try:
        fd = os.open(_lock_path(run_id), os.O_RDONLY)
    except OSError:
        return None
    try:
        named = os.read(fd, 100).decode(errors="replace").strip()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True, named
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, named
    finally:
        os.close(fd)


def _stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP, or a debugger)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] in ("T", "t")


def _alive_here(run: Run, pid: int, start: str | None, when: float | None) -> bool:
    """Whether the run's process, of this host, has it open. Known for certain from its lock
    (held: open, paused or not; let go by the process the heartbeat names: not). Without a lock
    that tells (a run being reopened, opened by another user or an older version): its process
    must be running, and be stopped or have beaten within three beats."""
    lock = None if _RESUMING.strip() in run.data.tags.get(TAG_HEARTBEAT, "") else \
        _lock_state(run.info.run_id)
    if lock is not None:
        held, named = lock
        if held:
            return True
        if named == f"{pid} {start or '-'}":
            return False
    if pid == os.getpid() and run.info.run_id not in _confirmed:
        return False      # this very process, which does not have it open
    if not _running_here(pid, start):
        return False
    if _stopped(pid):
        return True
    last = when if when is not None else run.info.start_time / 1000
    return time.time() - last <= 3 * heartbeat_seconds()


def released(run: Run) -> bool:
    """Whether the process the run's heartbeat names, of this host, let its lock go (it ended
    or died): certain, where `stale` is a guess."""
    _, host, pid, start = _owner(run.data.tags.get(TAG_HEARTBEAT, ""))
    if host != socket.gethostname() or pid is None:
        return False
    lock = _lock_state(run.info.run_id)
    return lock is not None and not lock[0] and lock[1] == f"{pid} {start or '-'}"


def stale(run: Run) -> bool:
    """Whether the run's heartbeat has been silent for three beats."""
    when = _owner(run.data.tags.get(TAG_HEARTBEAT, ""))[0]
    last = when if when is not None else run.info.start_time / 1000
    return time.time() - last > 3 * heartbeat_seconds()


def alive(run: Run) -> str | None:
    """Where a run is alive ("host H, pid P"), or None: a RUNNING run that a process of this
    host has open (paused or not), or whose heartbeat is fresh (another host's), or an
    interrupted one that a process is taking over (it has not reopened it yet)."""
    value = run.data.tags.get(TAG_HEARTBEAT, "")
    if run.info.status != "RUNNING" and not value.endswith(_RESUMING):
        return None
    when, host, pid, start = _owner(value)
    if host == socket.gethostname() and pid is not None:
        return f"host {host}, pid {pid}" if _alive_here(run, pid, start, when) else None
    if stale(run):
        return None
    return "an unknown host" if host is None else f"host {host}, pid {pid}"


def _mine(value: str) -> bool:
    _, host, pid, start = _owner(value)
    me = os.getpid()
    return (host == socket.gethostname() and pid == me
            and (start is None or start == (process_start(me) or start)))


# Per run this process owns: when its ownership was last confirmed (time.monotonic, which
# runs on while the process is stopped), and who took it, once someone has.
_confirmed: dict[str, float] = {}
_taken: dict[str, str] = {}
_lock = threading.Lock()


def _check(run_id: str, client: MlflowClient) -> None:
    """Read the run's heartbeat: still ours, refresh it; someone else's, remember who."""
    value = client.get_run(run_id).data.tags.get(TAG_HEARTBEAT, "")
    with _lock:
        if run_id in _taken:
            return
        if value and not _mine(value):
            _, host, pid, _ = _owner(value)
            _taken[run_id] = f"host {host}, pid {pid}"
            return
    client.set_tag(run_id, TAG_HEARTBEAT, beat())
    with _lock:
        _confirmed[run_id] = time.monotonic()


@contextmanager
def heartbeat(run_id: str) -> Iterator[None]:
    """Keep the run's heartbeat tag fresh from a background thread while the body runs, and
    notice if another process takes the run over."""
    stop = threading.Event()
    client = MlflowClient()
    with _lock:
        _confirmed[run_id] = time.monotonic()
        _taken.pop(run_id, None)

    def loop() -> None:
        while not stop.wait(heartbeat_seconds()):
            try:
                _check(run_id, client)
            except Exception:  # a store outage: the run goes on, it only looks older
                pass
            if run_id in _taken:
                return

    thread = threading.Thread(target=loop, name=f"heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        with _owning(run_id):
            yield
    finally:
        stop.set()
        thread.join(timeout=10)
        with _lock:
            _confirmed.pop(run_id, None)


def fence(run_id: str) -> None:
    """Before a log into `run_id`: raise RunTakenOver if another process owns it now. Cheap
    while the heartbeat keeps confirming; after a gap (this process was stopped, or the store
    was slow) it reads the heartbeat first."""
    with _lock:
        taken, confirmed = _taken.get(run_id), _confirmed.get(run_id)
    if taken is None and confirmed is not None and (
            time.monotonic() - confirmed > 2 * heartbeat_seconds()):
        _check(run_id, MlflowClient())
        taken = _taken.get(run_id)
    if taken is not None:
        raise RunTakenOver(f"run {run_id} was taken over by {taken} while this process was "
                           f"not heard from; stopping without logging into it", run_id)


def take_over(run_id: str, refuse_if_alive) -> None:
    """Make an interrupted run this process's to resume, just before reopening it. Two
    processes that both found it interrupted both write their heartbeat, wait, and read it
    back: the one whose beat was overwritten yields, as to a live run. (MLflow has no
    compare-and-set; this relies on two crossing writes landing within
    TAKEOVER_SETTLE_SECONDS of each other.)"""
    client = MlflowClient()
    run = client.get_run(run_id)
    refuse_if_alive(run)  # taken since the resume was checked
    mine = beat(_RESUMING)
    client.set_tag(run_id, TAG_HEARTBEAT, mine)
    time.sleep(TAKEOVER_SETTLE_SECONDS)
    run = client.get_run(run_id)
    if run.data.tags.get(TAG_HEARTBEAT) != mine:
        refuse_if_alive(run)
