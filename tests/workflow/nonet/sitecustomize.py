"""Imported by every Python process of a workflow test run (via PYTHONPATH): no network.

Any connection to a non-loopback address raises, so a job that tries to reach a model hub or
any other host fails loudly instead of passing because the network happened to be there.
"""

import ipaddress
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _allowed(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolving it is already the network


def _guarded(method):
    def connect(self, address):
        if not _allowed(address):
            raise OSError(f"network access blocked by the test harness: {address!r}")
        return method(self, address)

    return connect


socket.socket.connect = _guarded(_connect)
socket.socket.connect_ex = _guarded(_connect_ex)
_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1") and not str(host).startswith("127."):
        raise OSError(f"name resolution blocked by the test harness: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
