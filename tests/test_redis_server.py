"""The embedded redis-server: URL forms, credentials, and that it never outlives its owner."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
import redis

from nexus_writer.child_process import process_state
from nexus_writer.redis_client import connect
from nexus_writer.redis_server import EmbeddedRedis, RedisServerError


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")  # a zombie has exited


@pytest.mark.parametrize(
    ("options", "scheme"),
    [
        ({}, "redis://127.0.0.1:"),
        ({"unix_socket": True}, "unix:///"),
        ({"password": "s3cret/:@"}, "redis://:s3cret%2F%3A%40@127.0.0.1:"),
        ({"username": "writer", "password": "pw"}, "redis://writer:pw@127.0.0.1:"),
        ({"unix_socket": True, "username": "writer", "password": "pw"}, "unix://writer:pw@/"),
    ],
    ids=["tcp", "unix", "password", "acl-user", "unix-acl-user"],
)
def test_url_forms_connect(options: dict[str, object], scheme: str) -> None:
    with EmbeddedRedis(**options) as server:  # type: ignore[arg-type]
        assert server.url.startswith(scheme)
        client = connect(server.url)
        assert client.ping()
        client.set("k", b"\x00\xff")
        assert client.get("k") == b"\x00\xff"  # bytes, as the protocol needs
        client.close()


def test_credentials_are_enforced() -> None:
    with EmbeddedRedis(username="writer", password="pw") as server:
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        with pytest.raises(redis.AuthenticationError):
            connect(f"redis://127.0.0.1:{port}/0").ping()  # the default user is off
        with pytest.raises(redis.AuthenticationError):
            connect(f"redis://writer:wrong@127.0.0.1:{port}/0").ping()


def test_stop_kills_the_process_and_removes_its_directory() -> None:
    server = EmbeddedRedis(unix_socket=True).start()
    pid, directory = server.pid, os.path.dirname(server.url.split("@")[-1].replace("unix://", ""))
    assert pid is not None and alive(pid) and os.path.isdir(directory) and server.alive()
    server.stop()
    server.stop()  # twice: nothing happens
    assert not alive(pid) and not os.path.exists(directory) and not server.alive()
    with pytest.raises(RedisServerError, match="not running"):
        _ = server.url


def test_a_forgotten_server_is_stopped_when_collected() -> None:
    server = EmbeddedRedis().start()
    pid = server.pid
    assert pid is not None
    del server
    gc.collect()
    assert not alive(pid)


def test_interpreter_exit_stops_the_server() -> None:
    code = (
        "from nexus_writer.redis_server import EmbeddedRedis\n"
        "server = EmbeddedRedis().start()\n"
        "print(server.pid, flush=True)\n"  # exits without stop(): the finalizer must run
    )
    run = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert not alive(int(run.stdout.split()[0]))


def test_bad_binary_and_bad_url_give_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_WRITER_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(RedisServerError, match="NEXUS_WRITER_REDIS_SERVER=/nonexistent"):
        EmbeddedRedis()
    monkeypatch.setenv("NEXUS_WRITER_REDIS_SERVER", "/bin/false")
    with pytest.raises(RedisServerError, match="exited with status 1 before it was ready"):
        EmbeddedRedis(startup_timeout=5).start()
    with pytest.raises(ValueError, match="scheme must be redis://, rediss:// or unix://"):
        connect("http://localhost:6379")
