"""The test suite's network guard: nothing a test runs may talk to any address but loopback.

`install()` wraps the Python socket calls that send to an address (connect, connect_ex, sendto, sendmsg;
create_connection goes through connect) and the name look-ups that could query a DNS server (getaddrinfo,
gethostbyname, gethostbyname_ex). A call aimed anywhere but loopback (127.0.0.0/8, ::1, "localhost") or a
Unix socket is refused *before* the system call, so no packet leaves, and is recorded:

- in this process, in `violations` (tests/conftest.py fails the test that made it, even if the code under
  test swallowed the exception);
- in a child process, appended to the file named by $HTOUCH_NETGUARD_LOG (conftest checks it after every
  test). Children are guarded because conftest puts tests/netguard_site first on $PYTHONPATH: Python imports
  its sitecustomize.py at start-up, which calls install(). A test that starts Python with its own env must
  keep $PYTHONPATH (prepend to it, do not replace it).

Limits: code that opens sockets outside Python (C/C++ libraries such as libfranka) is not seen; for those the
rig file's address checks and the fixtures' 127.0.0.1 are what keep them local.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
import traceback

LOG_ENV = "HTOUCH_NETGUARD_LOG"
_MARK = "_htouch_netguard_originals"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}

_lock = threading.Lock()


class NetworkGuardError(RuntimeError):
    """A test tried to reach an address other than loopback."""


def is_loopback(host: object) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and localhost; False for every other address or name."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host.lower().rstrip(".") in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _is_numeric(host: object) -> bool:
    try:
        ipaddress.ip_address(str(host).split("%", 1)[0])
        return True
    except ValueError:
        return False


def _refuse(what: str) -> None:
    line = f"netguard: refused {what} (tests may reach loopback only) in pid {os.getpid()}"
    where = "".join(traceback.format_stack(limit=8)[:-2])
    with _lock:
        _violations().append(line)
        log = os.environ.get(LOG_ENV)
        if log:
            try:
                with open(log, "a") as f:
                    f.write(line + "\n")
            except OSError:
                pass
    print(f"{line}\n{where}", file=sys.stderr, flush=True)
    raise NetworkGuardError(line)


def _check_address(sock: socket.socket, address: object, call: str) -> None:
    family = getattr(sock, "family", None)
    if family == getattr(socket, "AF_UNIX", None) or family == getattr(socket, "AF_NETLINK", None):
        return  # local to this machine by construction
    host = address[0] if isinstance(address, tuple) and address else address
    if not is_loopback(host):
        _refuse(f"{call} to {address!r}")


def _check_name(name: object, call: str) -> None:
    # A numeric address is not looked up (no packet); connect() then judges it. A name other than
    # localhost could be sent to a DNS server.
    if name is None or is_loopback(name) or _is_numeric(name) or name == "":
        return
    _refuse(f"{call}({name!r}), a name look-up that may query a DNS server")


def install() -> None:
    """Guard this process (idempotent, also across two copies of this module)."""
    cls = socket.socket
    if getattr(cls, _MARK, None) is not None:
        return
    originals = {name: getattr(cls, name) for name in ("connect", "connect_ex", "sendto", "sendmsg")}
    originals.update({name: getattr(socket, name) for name in ("getaddrinfo", "gethostbyname",
                                                               "gethostbyname_ex")})

    def connect(self, address):
        _check_address(self, address, "connect")
        return originals["connect"](self, address)

    def connect_ex(self, address):
        _check_address(self, address, "connect_ex")
        return originals["connect_ex"](self, address)

    def sendto(self, data, *args):
        _check_address(self, args[-1] if args else None, "sendto")
        return originals["sendto"](self, data, *args)

    def sendmsg(self, buffers, *args):
        if len(args) >= 3:  # (ancdata, flags, address)
            _check_address(self, args[2], "sendmsg")
        return originals["sendmsg"](self, buffers, *args)

    def getaddrinfo(host, *args, **kwargs):
        _check_name(host, "getaddrinfo")
        return originals["getaddrinfo"](host, *args, **kwargs)

    def gethostbyname(name):
        _check_name(name, "gethostbyname")
        return originals["gethostbyname"](name)

    def gethostbyname_ex(name):
        _check_name(name, "gethostbyname_ex")
        return originals["gethostbyname_ex"](name)

    cls.connect, cls.connect_ex, cls.sendto, cls.sendmsg = connect, connect_ex, sendto, sendmsg
    socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex = (getaddrinfo, gethostbyname,
                                                                         gethostbyname_ex)
    setattr(cls, _MARK, {"originals": originals, "violations": []})


def _violations() -> list[str]:
    """The refusals of this process, kept on the socket class so that every copy of this module (the one
    sitecustomize loaded, the one conftest imported) shares them."""
    return getattr(socket.socket, _MARK)["violations"]


def take_violations() -> list[str]:
    """The refusals recorded in this process since the last call (and forget them)."""
    with _lock:
        found = _violations()
        out = list(found)
        found.clear()
    return out


SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netguard_site")
