"""Ports for child processes are held by the harness until the child binds them: no other pick,
process or outgoing connection can take one in between (the flake of issue 38: a device's HTTP
port equal to the link's)."""

from __future__ import annotations

import socket
import subprocess
import sys

from semlink.procs import reserve_port


def test_reserved_ports_are_distinct_and_not_given_to_other_binds_or_connections():
    held = {reserve_port() for _ in range(200)}
    assert len(held) == 200
    others = []
    for _ in range(200):  # the kernel's own picks: a server on port 0, a client's source port
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        others.append(s)
    listener = others[0]
    listener.listen(300)
    others += [socket.create_connection(listener.getsockname()) for _ in range(200)]
    try:
        assert not held & {s.getsockname()[1] for s in others}
    finally:
        for s in others:
            s.close()


def test_a_child_binds_and_listens_on_its_reserved_port_and_a_stranger_cannot():
    port = reserve_port()
    stranger = socket.socket()  # no SO_REUSEADDR: what an unrelated program would do
    try:
        stranger.bind(("127.0.0.1", port))
        bound = True
    except OSError:
        bound = False
    finally:
        stranger.close()
    assert not bound
    child = (
        "import asyncio, sys\n"
        "async def main():\n"
        f"    server = await asyncio.start_server(lambda r, w: w.close(), '0.0.0.0', {port})\n"
        "    print(server.sockets[0].getsockname()[1], flush=True)\n"
        "    server.close()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == port
