"""The request/response probe: a Unix-socket server that does a fixed slice of
CPU work per request, and an open-loop client whose rate follows a SineRate.

    python -m benchmarks.noisy.probe server SOCKET [--work-us 200]
    python -m benchmarks.noisy.probe client SOCKET OUT --duration S [--quiet R --busy R --period S]

The client writes one line per request to OUT, ``send_monotonic latency_seconds``
(CLOCK_MONOTONIC is the whole machine's, so the benchmark lines it up with its
own samples), flushed every second, so a killed client leaves its record.
Latency runs from the send to the whole reply; a request the schedule wanted
earlier than the client could send it is sent late, not skipped."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time

from benchmarks.noisy.schedule import SineRate

REQUEST = b"q" * 64
REPLY_SIZE = 64


def spin(seconds: float) -> None:
    """Burn CPU for ``seconds`` of wall time (the request's service time)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def serve(path: str, work: float) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    reply = b"r" * REPLY_SIZE
    while True:
        conn, _ = srv.accept()
        with conn:
            while True:
                req = conn.recv(len(REQUEST))
                if not req:
                    break
                spin(work)
                conn.sendall(reply)


def _recv_exactly(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise ConnectionError("server closed the connection")
        got += len(chunk)


def client(path: str, out: str, duration: float, rate: SineRate) -> None:
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with open(out, "w", buffering=1 << 16) as fh:
        start = time.monotonic()
        last_flush = start
        for due in rate.send_times(duration, start):
            if stop:
                break
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            t0 = time.monotonic()
            sock.sendall(REQUEST)
            _recv_exactly(sock, REPLY_SIZE)
            t1 = time.monotonic()
            fh.write(f"{t0:.6f} {t1 - t0:.7f}\n")
            if t1 - last_flush >= 1.0:
                fh.flush()
                last_flush = t1
    sock.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("socket")
    s.add_argument("--work-us", type=float, default=200.0)
    c = sub.add_parser("client")
    c.add_argument("socket")
    c.add_argument("out")
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--quiet", type=float, default=SineRate.quiet)
    c.add_argument("--busy", type=float, default=SineRate.busy)
    c.add_argument("--period", type=float, default=SineRate.period)
    args = ap.parse_args(argv)
    if args.role == "server":
        serve(args.socket, args.work_us * 1e-6)
    else:
        client(args.socket, args.out, args.duration, SineRate(args.quiet, args.busy, args.period))


if __name__ == "__main__":
    main()
