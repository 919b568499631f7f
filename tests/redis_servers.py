"""Real redis-server processes for tests: each on a free loopback port, no persistence.

``RedisProcess.stop()`` kills it (a crash, for outage tests); ``start()`` brings it back
on the same port, empty. Tests never use port 6379, so a developer's own Redis is safe.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

#: CI starts one server and exports its URL (see .ci/run); tests then use it as the shared
#: session server. Read once and removed, so that guardrails (in this process and in the
#: subprocesses tests start) sees no Redis unless a test gives it one.
CI_URL = os.environ.pop("GUARDRAILS_REDIS_URL", None)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail(
            "redis-server is not installed: the Redis tests run a real one "
            "(Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """One redis-server on 127.0.0.1, started at once."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while not self.answers():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server on port {self.port} exited: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer in 20 s")
            time.sleep(0.01)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill it (SIGKILL: as a crash, nothing flushed) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open and every command hangs."""
        assert self.proc is not None
        self.proc.send_signal(19)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(18)
