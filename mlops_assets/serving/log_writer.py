"""The inference log written by a process of its own, for the REST server.

A flush of the inference log (building 2,000 rows' Arrow columns, the Parquet file, the Delta
commit) costs the process that makes it 60-90 ms of CPU, some of it holding the GIL for
milliseconds at a time; in the serving process that time lands on the requests being answered
then, and sets the latency's tail. `ProcessInferenceLog` records rows exactly as
`InferenceLog` does (column by column, checked when recorded) and hands them, every
`send_interval_ms`, to a writer process (`python -m mlops_assets.serving.log_writer`) that
holds an `InferenceLog` of its own and makes the flushes. The serving process's share of a
row is then a list append per column and its part of one pickled message.

Nothing is lost when the writer dies: the server keeps every chunk it sent until the writer
says a commit holds it, starts a new writer and sends them again. Each commit carries the
writer's id and the last chunk it holds (`log_writer`, `log_writer_through` in the commit's
metadata), and a new writer reads them from the table's recent history, so a chunk committed
just before the writer died is not written twice.

The messages are pickles, each after its length (8 bytes, big-endian), over the writer's
stdin and stdout:
- to the writer: `("start", uri, schema, flush_rows, flush_interval_ms, writer_id, since)`
  first (since: the last version its predecessors committed, None before any),
  then `("rows", seq, dtypes, columns, height)`, `("flush", token)` and `("close",)`;
- from it: `("state", stats, through)` after each flush it tries (through: the last chunk
  committed, -1 before any), `("flushed", token, rows, error)` and `("closed", error)`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import polars as pl

from mlops_assets.serving.inference_log import (
    InferenceLog,
    InferenceLogError,
    LogStats,
    _Columns,
    _Recorder,
)

_LENGTH = struct.Struct("!Q")
WRITER_KEY = "log_writer"
THROUGH_KEY = "log_writer_through"
# Commits of the table's history a new writer reads for its id (the chunks its predecessor
# committed); a predecessor commits at most once per flush interval, and dies at its last.
_HISTORY = 50


def _encode(message: tuple) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class _Reader:
    """Whole messages from a pipe's file descriptor.

    Read without Python's buffering, so that `select` tells when more is there.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.ended = False

    def read(self) -> list[tuple]:
        """What one read brings: its whole messages (none at the pipe's end: `ended`)."""
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self.ended = True
            return []
        self.buffer += chunk
        messages = []
        while len(self.buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self.buffer)
            end = _LENGTH.size + length
            if len(self.buffer) < end:
                break
            messages.append(pickle.loads(self.buffer[_LENGTH.size : end]))
            del self.buffer[:end]
        return messages


def committed_through(uri: str, writer_id: str, since: int | None = None) -> int:
    """The last chunk of writer `writer_id` that a commit of the table holds, or -1.

    The commits read are those after version `since` (the last one the server knew of this
    log's writers; every later commit of theirs is among them), and at least the last 50.
    """
    from deltalake import DeltaTable

    from mlops_assets.lakehouse.delta_io import storage_options_for, table_exists

    if not table_exists(uri):
        return -1
    table = DeltaTable(uri, storage_options=storage_options_for(uri))
    limit = _HISTORY if since is None else max(_HISTORY, table.version() - since + 1)
    for entry in table.history(limit):
        if entry.get(WRITER_KEY) == writer_id:
            return int(entry[THROUGH_KEY])
    return -1


class _Writer:
    """The writer process's state: its log, the chunks it holds, what it knows committed.

    What its predecessors committed (`committed_through`) is read from the table before any
    chunk is taken; until that read succeeds, chunks are held and every flush fails with the
    read's error (reported, retried), so that no chunk is written twice.
    """

    def __init__(self, start: tuple, outgoing: IO[bytes]) -> None:
        _, uri, schema, flush_rows, flush_interval_ms, self.writer_id, self.since = start
        self.log = InferenceLog(
            uri,
            schema=schema,
            flush_rows=flush_rows,
            flush_interval_ms=flush_interval_ms,
            max_pending=sys.maxsize,
            start=False,
        )
        self.outgoing = outgoing
        self.through: int | None = None  # the last chunk known committed (-1: none)
        self.held: list[tuple] = []  # chunks taken before `through` was known
        self.pending_through = -1  # the last chunk in the log's buffer
        self.first_pending_at: float | None = None
        self.retry_at = 0.0
        self.failures = 0  # failed reads of the history (the log counts failed commits)
        self.error: str | None = None

    def send(self, message: tuple) -> None:
        try:
            self.outgoing.write(_encode(message))
            self.outgoing.flush()
        except BrokenPipeError:
            pass  # the server is gone; the last flush still runs

    def report(self) -> None:
        stats = self.log.stats()
        if self.error and not stats.last_error:
            stats = dataclasses.replace(stats, last_error=self.error)
        stats = dataclasses.replace(stats, failures=stats.failures + self.failures)
        self.send(("state", stats, -1 if self.through is None else self.through))

    def resolve(self) -> str | None:
        """Read what predecessors committed, once; the error when the read fails."""
        if self.through is not None:
            return None
        try:
            self.through = committed_through(self.log.uri, self.writer_id, self.since)
        except Exception as error:  # noqa: BLE001 - reported; the chunks stay held
            self.failures += 1
            return f"reading the table's history failed: {type(error).__name__}: {error}"
        self.pending_through = max(self.pending_through, self.through)
        held, self.held = self.held, []
        for chunk in held:
            self.take(chunk)
        return None

    def take(self, chunk: tuple) -> None:
        _, seq, dtypes, columns, height = chunk
        if self.through is None:
            self.held.append(chunk)
        elif seq > self.through:  # lower ones were committed by the writer this one replaces
            self.log.take_columns(dtypes, columns, height)
            self.pending_through = seq
        if self.first_pending_at is None and self.pending():
            self.first_pending_at = time.monotonic()

    def pending(self) -> int:
        return self.log.stats().pending + sum(chunk[4] for chunk in self.held)

    def due(self) -> bool:
        now, pending = time.monotonic(), self.pending()
        return bool(pending) and (
            now >= self.retry_at
            and (
                pending >= self.log.flush_rows
                or now - self.first_pending_at >= self.log.flush_interval
            )
        )

    def wait(self) -> float | None:
        """Seconds until a flush is due (None: nothing pending)."""
        if not self.pending():
            return None
        due = max(self.retry_at, self.first_pending_at + self.log.flush_interval)
        return max(0.0, due - time.monotonic())

    def flush(self) -> tuple[int, str | None]:
        """Commit what the log holds; the rows written, or the error (rows kept, retried)."""
        error = self.resolve()
        if error is None:
            try:
                rows = self.log.flush(
                    metadata={WRITER_KEY: self.writer_id, THROUGH_KEY: str(self.pending_through)}
                )
            except Exception as failure:  # noqa: BLE001 - reported; the rows stay pending
                error = f"{type(failure).__name__}: {failure}"
        if error is not None:
            self.error = error
            self.retry_at = time.monotonic() + min(self.log.flush_interval, 1.0)
            self.report()
            return 0, error
        self.through = max(-1 if self.through is None else self.through, self.pending_through)
        self.first_pending_at, self.error = None, None
        self.report()
        return rows, None


def serve_writer(incoming: int, outgoing: IO[bytes]) -> None:
    """The writer process's loop: take chunks, flush on the log's cadence, report.

    Ends at `("close",)` or at the end of its input (the server is gone), after a last
    flush; rows a failing last flush holds are lost with the process, and it says so.
    """
    reader = _Reader(incoming)
    while not (messages := reader.read()) and not reader.ended:
        pass
    if not messages or messages[0][0] != "start":
        raise SystemExit("log writer: the first message must be ('start', ...)")
    writer = _Writer(messages[0], outgoing)
    if writer.resolve() is None:
        writer.report()
    queue = collections.deque(messages[1:])
    while True:
        while queue:
            message = queue.popleft()
            kind = message[0]
            if kind == "rows":
                writer.take(message)
            elif kind == "flush":
                rows, error = writer.flush()
                writer.send(("flushed", message[1], rows, error))
            elif kind == "close":
                _, error = writer.flush()
                writer.send(("closed", error))
                return
        if writer.due():
            writer.flush()
            continue
        if reader.ended:
            _, error = writer.flush()
            if error:
                print(f"log writer: the server is gone and {error}", file=sys.stderr)
            return
        if select.select([incoming], [], [], writer.wait())[0]:
            queue.extend(reader.read())


class ProcessInferenceLog(_Recorder):
    """The inference log for a server: rows recorded here, written by a process of its own.

    It answers as `InferenceLog` does (`record`, `record_many`, `add_columns`, `flush`,
    `close`, `stats`, `closed`); see the module's text for how rows travel and why none is
    lost when the writer dies.

    Args:
        uri: The table's location.
        schema: Column types of the rows (see `inference_schema`).
        flush_rows: The writer commits as soon as this many rows are pending.
        flush_interval_ms: The writer commits pending rows at least this often.
        max_pending: Refuse `record` beyond this many rows recorded and not committed.
        send_interval_ms: How often recorded rows are sent to the writer.
        python: The interpreter the writer runs on.
    """

    def __init__(
        self,
        uri: str | Path,
        *,
        schema: Mapping[str, pl.DataType] | None = None,
        flush_rows: int = 2_000,
        flush_interval_ms: int = 1_000,
        max_pending: int = 1_000_000,
        send_interval_ms: int = 50,
        python: str = sys.executable,
    ) -> None:
        if send_interval_ms < 1:
            raise ValueError("send_interval_ms must be positive")
        self._start_recording(uri, schema, flush_rows, flush_interval_ms, max_pending)
        self.send_interval = send_interval_ms / 1000
        self.python = python
        self.writer_id = uuid.uuid4().hex
        # What the writer said last (`LogStats` of its log), and the writers started.
        self._remote: LogStats | None = None
        self._base_commits = self._base_failures = 0
        # Rows of the chunks a commit is known to hold (what a writer said, or its history).
        self._written = 0
        self._restarts = 0
        self._local_failures = 0
        # Held while sending: chunks reach the writer in order, `_unacked` in step with them.
        self._send_lock = threading.RLock()
        self._seq = -1
        self._unacked: collections.deque[tuple] = collections.deque()
        self._replies: dict[int, list] = {}
        # Requests (flush, close) sent and not answered yet: a new writer gets them again.
        self._asked: dict[int, tuple] = {}
        self._finished = False  # the writer answered the close
        self._stopping = False  # close() is over (answered or not): no writer is started
        self._backoff = min(self.flush_interval, 1.0)  # before starting a writer again
        self._last_flush_at: datetime.datetime | None = None
        self._last_version: int | None = None
        self._replied = threading.Condition(self._lock)
        self._tokens = 0
        self._process: subprocess.Popen | None = None
        self._start_writer()
        self._sender = threading.Thread(target=self._send_loop, name="log-sender", daemon=True)
        self._sender.start()

    def __enter__(self) -> ProcessInferenceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unwritten(self) -> int:
        return self._recorded - self._written

    @property
    def writer(self) -> str:
        """Who makes the commits: `process` (a writer process of its own)."""
        return "process"

    @property
    def pid(self) -> int | None:
        """The writer process's id (the current one, after a restart)."""
        return None if self._process is None else self._process.pid

    def _start_writer(self) -> None:
        """Start a writer and send it every chunk not known to be committed."""
        with self._send_lock:
            with self._lock:
                previous, self._remote = self._remote, None
                if previous is not None:
                    self._base_commits += previous.commits
                    self._base_failures += previous.failures
            process = subprocess.Popen(
                [self.python, "-m", "mlops_assets.serving.log_writer"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._process = process
            # Its replies are read from the start: a writer catching up on a backlog answers
            # while it is still being sent chunks, and must never block on a full pipe.
            threading.Thread(
                target=self._receive_loop, args=(process,), name="log-receiver", daemon=True
            ).start()
            try:
                self._write(
                    (
                        "start",
                        self.uri,
                        self.schema,
                        self.flush_rows,
                        int(self.flush_interval * 1000),
                        self.writer_id,
                        self._last_version,
                    )
                )
                with self._lock:
                    # A copy: the receiver drops chunks as the new writer commits them.
                    unacked = list(self._unacked)
                for chunk in unacked:
                    self._write(chunk)
                with self._lock:
                    # Flushes in the order they were asked, a close last.
                    asked = [self._asked[t] for t in sorted(self._asked, key=lambda t: (t < 0, t))]
                for request in asked:
                    self._write(request)
            except BaseException:
                process.kill()  # its receiver starts another
                raise

    def _write(self, message: tuple) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        try:
            process.stdin.write(_encode(message))
            process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the writer is gone: the receiver starts another, which gets the chunks

    def _send_pending(self) -> None:
        """Send the rows recorded since the last send as one chunk (send lock held)."""
        with self._lock:
            if not self._rows:
                return
            rows, self._rows = self._rows, _Columns(self.schema)
        self._seq += 1
        chunk = ("rows", self._seq, rows.dtypes, rows.columns, rows.height)
        self._unacked.append(chunk)
        self._write(chunk)

    def _send_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.send_interval)
            self._wake.clear()
            with self._send_lock:
                if not self._closed:
                    self._send_pending()

    def _receive_loop(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        reader = _Reader(process.stdout.fileno())
        try:
            while not reader.ended:
                for message in reader.read():
                    self._received(message)
        except Exception as error:  # noqa: BLE001 - a garbled reply: this writer is replaced
            with self._lock:
                self._last_error = f"the inference log's writer sent a bad reply: {error}"
            process.kill()
        code = process.wait()
        while True:
            with self._lock:
                if process is not self._process or self._finished or self._stopping:
                    return
                # Died before its close was answered (killed, or a signal to the process
                # group before it could ignore it): another writer takes its chunks and
                # requests over, after a pause that doubles while writers keep dying.
                self._local_failures += 1
                self._last_error = f"the inference log's writer process exited with code {code}"
                pause, self._backoff = self._backoff, min(self._backoff * 2, 30.0)
            time.sleep(pause)
            with self._send_lock:
                if self._finished or self._stopping:
                    return
                try:
                    self._restarts += 1
                    self._start_writer()
                    return
                except Exception as error:  # noqa: BLE001 - e.g. no process can be started
                    code = f"unknown (it could not be started: {error})"

    def _received(self, message: tuple) -> None:
        kind = message[0]
        with self._lock:
            if kind == "state":
                _, stats, through = message
                self._remote = stats
                self._last_error = stats.last_error
                self._backoff = min(self.flush_interval, 1.0)  # this writer came up
                if stats.last_version is not None:
                    self._last_flush_at = stats.last_flush_at
                    self._last_version = stats.last_version
                while self._unacked and self._unacked[0][1] <= through:
                    self._written += self._unacked.popleft()[4]
            elif kind == "flushed":
                _, token, rows, error = message
                self._asked.pop(token, None)
                if token in self._replies:  # not given up on
                    self._replies[token].append((rows, error))
            elif kind == "closed":
                self._asked.pop(-1, None)
                self._finished = True
                if -1 in self._replies:
                    self._replies[-1].append((0, message[1]))
            self._replied.notify_all()

    def _ask(
        self, message_of_token: tuple, token: int, timeout: float | None, deadline: float | None
    ) -> tuple[int, str | None]:
        """Send a request after the pending rows; its reply by `deadline` (monotonic)."""
        left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._send_lock.acquire(timeout=left):
            raise InferenceLogError(
                f"the inference log's writer did not take its input within {timeout} s"
            )
        try:
            self._send_pending()
            with self._lock:
                self._replies[token] = []
                self._asked[token] = message_of_token
            self._write(message_of_token)
        finally:
            self._send_lock.release()
        with self._lock:
            while not self._replies[token]:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    del self._replies[token]
                    self._asked.pop(token, None)
                    raise InferenceLogError(
                        f"the inference log's writer did not answer within {timeout} s"
                    )
                self._replied.wait(left)
            return self._replies.pop(token)[0]

    def flush(self, timeout: float | None = 300.0) -> int:
        """Have the writer commit every row recorded so far now; return how many it wrote.

        Raises:
            InferenceLogError: The write failed (the rows stay pending, retried), or the
                writer did not answer within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._tokens += 1
            token = self._tokens
        rows, error = self._ask(("flush", token), token, timeout, deadline)
        if error:
            raise InferenceLogError(f"the inference log's flush failed: {error}")
        return rows

    def close(self, timeout: float | None = 300.0) -> None:
        """Send what is left, have the writer commit it and stop; wait for it.

        Raises:
            InferenceLogError: The last write failed, or the writer did not answer within
                `timeout` seconds; the rows it held are not in the table.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._sender.join(timeout)
        try:
            _, error = self._ask(("close",), -1, timeout, deadline)
        finally:
            with self._lock:
                self._stopping = True
            process = self._process
            if process is not None:
                if process.stdin is not None:
                    with contextlib.suppress(OSError):  # a writer already gone
                        process.stdin.close()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if error:
            raise InferenceLogError(f"the inference log's last flush failed: {error}")

    def stats(self) -> LogStats:
        """Counters of this log, the writer's commits included (see `LogStats`)."""
        with self._lock:
            remote = self._remote
            return LogStats(
                recorded=self._recorded,
                written=self._written,
                pending=self._recorded - self._written,
                commits=self._base_commits + (remote.commits if remote else 0),
                failures=self._base_failures
                + self._local_failures
                + (remote.failures if remote else 0),
                last_error=self._last_error,
                last_flush_at=self._last_flush_at,
                last_version=self._last_version,
            )


def main() -> None:
    """The writer process: messages on stdin, replies on stdout.

    It lives exactly as long as its input: interrupts and terminations sent to the server's
    process group are the server's to act on (it closes the log, which makes the last
    flush); a server that dies closes the pipe, which makes it too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The replies get the pipe to themselves: whatever else writes to stdout (a library's
    # message) goes to stderr instead of into the protocol.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve_writer(sys.stdin.fileno(), replies)


if __name__ == "__main__":
    main()
