"""Is a port free to listen on, and if not, who holds it: checked before a service starts, so that a taken port is
one line naming the setting that moves it (PortInUseError), not a bind error deep in a web server's start-up."""

from __future__ import annotations

import contextlib
import errno
import socket
from pathlib import Path

from streamscore.errors import PortInUseError


def ensure_free(port: int, variable: str, host: str = "127.0.0.1") -> None:
    """Raise PortInUseError (naming `variable`) when `host:port` cannot be listened on because something listens
    there. Port 0 (any free port) always passes; a host that does not resolve is left to the server to report."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        return
    with socket.socket(family, kind, proto) as probe:
        # As servers do: a port whose last connections linger in TIME_WAIT is free to listen on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUseError(variable, host, port, holder(port)) from None


def holder(port: int) -> str:
    """ "pid 1234 (redis-server)" for the process listening on TCP `port`, when this user may see it (Linux /proc);
    "" otherwise."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local address is HEX_IP:HEX_PORT; state 0A is LISTEN; the inode is the 10th field
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return ""
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            fds = list((process / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to see
        for fd in fds:
            # One descriptor at a time: one closed while we look (a thread of that process at work) must not end the
            # search of the process that holds the port (the CLI's own tests hold it in their pytest process).
            try:
                if str(fd.readlink()) in inodes:
                    return f"pid {process.name} ({(process / 'comm').read_text().strip()})"
            except OSError:
                continue
    return ""
