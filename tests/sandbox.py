"""Run a command the way a systemd unit confines it: an unprivileged user without any capability,
and only the socket address families the unit allows (``RestrictAddressFamilies=``).

systemd implements ``RestrictAddressFamilies=`` with a seccomp filter on ``socket(2)`` and
``socketpair(2)`` that fails other families with ``EAFNOSUPPORT``; :func:`install_family_filter`
installs the same filter (classic BPF, via prctl), so a test can run the daemon's real code path
under the unit's rule without systemd as PID 1. Used as::

    python -m tests.sandbox [--user nobody --expose PATH ...] --families AF_UNIX,AF_INET -- CMD ARGS...

``--user`` (root only) drops to that user with every capability set empty; ``--expose`` first makes
paths the command needs (this checkout, the interpreter) reachable by that user in a private mount
namespace when a directory on the way is root-only. Before running the command it prints one line to
stderr: ``sandbox: uid=... CapEff=... families=...``. Linux on x86_64 and aarch64 (:func:`supported`).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import pwd
import socket
import struct
import sys
import tempfile
from pathlib import Path

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# (audit arch, socket nr, socketpair nr)
_ARCH = {
    "x86_64": (0xC000003E, 41, 53),
    "aarch64": (0xC00000B7, 198, 199),
}
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06


def supported() -> bool:
    return sys.platform == "linux" and platform.machine() in _ARCH


def family_filter(families: list[int]) -> list[tuple[int, int, int, int]]:
    """BPF: socket()/socketpair() with a family outside ``families`` fail with EAFNOSUPPORT."""
    arch, nr_socket, nr_pair = _ARCH[platform.machine()]
    n = len(families)
    deny = (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT)
    allow = (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)
    prog = [
        (BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (BPF_JEQ_K, 1, 0, arch),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),  # another ABI: refuse the call
        (BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (BPF_JEQ_K, 1, 0, nr_socket),
        (BPF_JEQ_K, 0, n + 2, nr_pair),  # neither: allow (jump to the last instruction)
        (BPF_LD_W_ABS, 0, 0, 16),  # args[0], low 32 bits: the family
    ]
    for i, fam in enumerate(families):
        prog.append((BPF_JEQ_K, n - i, 0, fam))  # match: jump to allow
    prog += [deny, allow]
    return prog


def install_family_filter(families: list[int]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    prog = family_filter(families)
    insns = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in prog)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    ul = ctypes.c_ulong
    if libc.prctl(PR_SET_SECCOMP, ul(SECCOMP_MODE_FILTER), ctypes.c_void_p(ctypes.addressof(fbuf)), ul(0), ul(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def families_of(names: list[str]) -> list[int]:
    """``AF_UNIX AF_INET`` (a unit's words) -> numbers."""
    return [int(getattr(socket, n)) for n in names]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(x: str | None) -> bytes | None:
    return None if x is None else x.encode()


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc().mount(_enc(src), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data))
    _check(rc, f"mount {target}")


CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2


def _blocking(path: Path) -> Path | None:
    """The first directory from / down to ``path`` (itself included) that others cannot traverse."""
    for d in [*reversed(path.parents), path]:
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def expose(paths: list[Path]) -> None:
    """In a new private mount namespace, make ``paths`` reachable by other users without changing the
    host: a directory on the way that others may not traverse (say a 0700 home where this machine's
    Python lives) is covered with an empty world-traversable tmpfs into which only the children
    leading to ``paths`` are bind-mounted back. Root only; the host's mounts are untouched."""
    _check(_libc().unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    targets = [p.resolve() for p in paths]
    for _ in range(32):  # each pass uncovers one level of blocking directories
        by_dir: dict[Path, set[str]] = {}
        for t in targets:
            d = _blocking(t)
            if d is not None and d != t:
                by_dir.setdefault(d, set()).add(t.relative_to(d).parts[0])
            elif d == t:
                raise PermissionError(f"{t} itself is not traversable by others (mode {os.stat(t).st_mode:o})")
        if not by_dir:
            return
        for d, children in by_dir.items():
            stage = Path(tempfile.mkdtemp(prefix="gw-sandbox-"))
            for c in children:
                (stage / c).mkdir()
                _mount(str(d / c), str(stage / c), None, MS_BIND | MS_REC)
            _mount("tmpfs", str(d), "tmpfs", 0, "mode=0755")
            for c in children:
                (d / c).mkdir()
                _mount(str(stage / c), str(d / c), None, MS_BIND | MS_REC)
                _check(_libc().umount2(str(stage / c).encode(), MNT_DETACH), f"umount {stage / c}")
                (stage / c).rmdir()
            stage.rmdir()
    raise RuntimeError(f"could not expose {paths}")


PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def drop_to(user: str) -> None:
    """Become ``user`` with no capabilities at all: permitted, effective, inheritable, ambient and
    bounding sets empty (as ``CapabilityBoundingSet=`` empty and ``User=`` in a unit)."""
    pw = pwd.getpwnam(user)
    libc = _libc()
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)  # clears the permitted and effective sets


def capabilities() -> dict[str, int]:
    """This process's capability sets, from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Cap"):
            k, v = line.split(":", 1)
            out[k] = int(v.strip(), 16)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sandbox")
    p.add_argument("--families", required=True, help="comma list, as RestrictAddressFamilies= (AF_UNIX,AF_INET)")
    p.add_argument("--user", default=None, help="run as this user with no capabilities (root only)")
    p.add_argument("--expose", action="append", default=[], type=Path, help="make this path reachable (root only)")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command after --")
    if args.expose:
        expose(args.expose)
    if args.user:
        drop_to(args.user)
    install_family_filter(families_of(args.families.split(",")))
    caps = capabilities()
    print(
        f"sandbox: uid={os.getuid()} gid={os.getgid()} groups={os.getgroups()} "
        + " ".join(f"{k}={v:x}" for k, v in sorted(caps.items()))
        + f" families={args.families}",
        file=sys.stderr,
        flush=True,
    )
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
