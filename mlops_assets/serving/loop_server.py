"""The scoring server on one event loop: every keep-alive connection served by one thread.

`ScoringServer` (in `app.py`) gives each connection a thread; with several busy clients those
threads take turns on the interpreter lock, and a request can wait behind another's time
slice. `LoopScoringServer` serves every connection from one thread with non-blocking sockets
(`selectors`): it reads until a request is whole (its head, then `Content-Length` bytes),
answers it with the same handler as the threaded server (`app._Handler`, fed the request's
bytes: the same routes, errors, headers and metrics), and writes the answer, buffering what
the socket does not take at once. A request is scored as soon as it is whole, so no request
waits for another's slice; the inference log writer and the alias poller run in their own
threads as before.

Stopping (`stop`) stops accepting, answers requests already whole, writes pending answers,
closes the connections, then writes the inference log's last rows: every answered request
is in the log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import selectors
import socket
import threading
import time
from typing import Any

from mlops_assets.serving.requests import MAX_INVOCATION_BYTES

log = logging.getLogger(__name__)

# A request head longer than this is handed to the handler as is (it answers 414 or 431).
_MAX_HEAD = 65_536 + 100 * 8_192


class _Connection:
    """One client connection: bytes read and not yet handled, bytes to write."""

    __slots__ = ("address", "closing", "inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock = sock
        self.address = address
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.closing = False


class _Output(io.RawIOBase):
    """The handler's `wfile`: what it writes goes to the connection's outbox."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.connection.outbox += data
        return len(data)


def _request_length(inbox: bytearray) -> int | None:
    """Bytes of the first request in `inbox` once it is whole (head and body), else None.

    A request whose head has no usable `Content-Length`, or announces a body larger than
    the server takes, is handed over without its body: the handler refuses it (411, 400,
    413) and closes the connection.
    """
    end = inbox.find(b"\r\n\r\n")
    if end < 0:
        return len(inbox) if len(inbox) > _MAX_HEAD else None
    head = bytes(inbox[:end]).lower()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip()
        if name == b"transfer-encoding":
            return end + 4
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return end + 4
    if length < 0 or length > MAX_INVOCATION_BYTES:
        return end + 4
    total = end + 4 + length
    return total if len(inbox) >= total else None


class LoopScoringServer:
    """The scoring server on one event loop (see the module's description).

    Args:
        address: (host, port); port 0 picks a free one.
        service: The scoring logic (`app.ScoringService`).
        backlog: Connections waiting to be accepted at most.
    """

    def __init__(self, address: tuple[str, int], service: Any, *, backlog: int = 128) -> None:
        self.service = service
        self.draining = False
        self.socket = socket.create_server(address, backlog=backlog)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._selector.register(self.socket, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self._connections: dict[socket.socket, _Connection] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopScoringServer:
        """Serve in a background thread; return self."""
        self._thread = threading.Thread(target=self._run, name="http-loop", daemon=True)
        self._thread.start()
        return self

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, mask in self._selector.select(timeout=0.5):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_read.recv(4096)
                    else:
                        connection: _Connection = key.data
                        if mask & selectors.EVENT_WRITE:
                            self._write(connection)
                        if mask & selectors.EVENT_READ and not connection.closing:
                            self._read(connection)
        except Exception:
            log.exception("the event loop failed")
            raise

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, address)
            self._connections[sock] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, connection: _Connection) -> None:
        try:
            chunk = connection.sock.recv(262_144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if not chunk:
            self._close(connection)
            return
        connection.inbox += chunk
        self._handle(connection)

    def _handle(self, connection: _Connection) -> None:
        """Answer every whole request in the connection's inbox, in order."""
        while not connection.closing:
            length = _request_length(connection.inbox)
            if length is None:
                break
            request = bytes(connection.inbox[:length])
            del connection.inbox[:length]
            keep = self._answer(connection, request)
            if not keep:
                connection.closing = True
        self._write(connection)

    def _answer(self, connection: _Connection, request: bytes) -> bool:
        """Run the handler on one request's bytes; return whether the connection stays open."""
        from mlops_assets.serving.app import _Handler

        handler = _Handler.__new__(_Handler)
        handler.server = self  # type: ignore[assignment]
        handler.client_address = connection.address
        handler.request = connection.sock
        handler.rfile = io.BufferedReader(io.BytesIO(request))  # type: ignore[arg-type]
        handler.wfile = _Output(connection)  # type: ignore[assignment]
        handler.close_connection = True
        try:
            handler.handle_one_request()
        except Exception:  # noqa: BLE001 - a bug must not stop the loop
            log.exception("handling a request failed")
            return False
        return not handler.close_connection

    def _write(self, connection: _Connection) -> None:
        if connection.outbox:
            try:
                sent = connection.sock.send(connection.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(connection)
                return
            del connection.outbox[:sent]
        if connection.outbox:
            self._selector.modify(
                connection.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, connection
            )
            return
        if connection.closing:
            self._close(connection)
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(connection.sock, selectors.EVENT_READ, connection)

    def _close(self, connection: _Connection) -> None:
        if self._connections.pop(connection.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        with contextlib.suppress(OSError):
            connection.sock.close()

    # -- stopping -----------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully and write the inference log's last rows.

        No new connections are accepted; requests already whole are answered and their
        answers written (for at most `timeout` seconds); the connections close; then the
        log writes what it holds.
        """
        self.draining = True
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self.socket)
        self.socket.close()
        deadline = time.monotonic() + timeout
        for connection in list(self._connections.values()):
            # Requests read in full are answered (with `Connection: close`).
            self._handle(connection)
            connection.closing = True
        while self._connections and time.monotonic() < deadline:
            for connection in list(self._connections.values()):
                self._write(connection)
            if self._connections:
                time.sleep(0.005)
        for connection in list(self._connections.values()):
            self._close(connection)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()
        for holder in self.service.holders.values():
            holder.stop()
        self.service.inference_log.close()
        self.service.store.close()
