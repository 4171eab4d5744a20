"""A worker's metrics port listens on the loopback unless the settings say otherwise."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path


def listening_addresses(port: int) -> set[str]:
    """Return the local IPv4 addresses (dotted) on which something listens on `port`, read from /proc/net/tcp."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, port_hex = local.partition(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_in_a_process(port: int, *host_argument: str) -> subprocess.Popen[str]:
    """Start a process that serves worker metrics as the launcher does, and wait until it says on which port."""
    arguments = f", host={host_argument[0]!r}" if host_argument else ""
    code = textwrap.dedent(f"""
        import sys, time
        from styleq.worker.metrics import serve_metrics
        folder, port = serve_metrics({port}{arguments})
        print(port, flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert int(process.stdout.readline()) == port
    return process


def test_worker_metrics_listen_on_the_loopback_by_default() -> None:
    port = free_port()
    process = serve_in_a_process(port)
    with process:
        try:
            assert listening_addresses(port) == {"127.0.0.1"}
        finally:
            process.kill()


def test_worker_metrics_listen_on_every_address_when_told_to() -> None:
    port = free_port()
    process = serve_in_a_process(port, "0.0.0.0")
    with process:
        try:
            assert listening_addresses(port) == {"0.0.0.0"}
        finally:
            process.kill()
