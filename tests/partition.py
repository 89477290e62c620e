"""A real network partition for processes on this machine: every packet of a cut process tree
is dropped, in both directions, until it is healed. Nothing is faked in the client.

How: each partitionable process is started inside a cgroup v2 group of its own (a shell
writes its pid to ``cgroup.procs``, then ``exec``s the command, so every socket it and its
children open belongs to that group). One iptables rule in ``mangle OUTPUT`` marks each
connection that group opens (``-m cgroup --path … -j CONNMARK``); cutting inserts
``OUTPUT -m connmark --mark … -j DROP``. On loopback both directions of a connection pass
``OUTPUT``, so Redis's replies to the cut process are dropped too, as on a lost link: the
process lives on, holds its messages, its TCP retransmits, and it reconnects after healing.

Needs root, iptables with the ``cgroup``, ``connmark`` and ``comment`` matches, and a
writable cgroup v2 hierarchy; :func:`unavailable` says what is missing. Every rule carries
the comment ``crypto-ml-partition-<pid>`` and is removed by :meth:`Partitions.close`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or its ``unified``)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True,
                          check=check, timeout=30)


def unavailable() -> str | None:
    """Why a partition cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "a network partition needs root (iptables and cgroups)"
    if shutil.which("iptables") is None:
        return "a network partition needs iptables (apt-get install iptables)"
    root = cgroup2_root()
    if root is None or not os.access(root, os.W_OK):
        return "a network partition needs a writable cgroup v2 hierarchy"
    probe = root / f"crypto-ml-probe-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        rule = ["-m", "cgroup", "--path", f"/{probe.name}", "-m", "comment", "--comment",
                "crypto-ml-probe", "-j", "CONNMARK", "--set-mark", "0x7e"]
        done = _iptables("-t", "mangle", "-A", "OUTPUT", *rule, check=False)
        if done.returncode != 0:
            return f"iptables cannot match cgroups here: {done.stderr.strip()}"
        _iptables("-t", "mangle", "-D", "OUTPUT", *rule, check=False)
    except OSError as error:
        return f"cannot make a cgroup: {error}"
    finally:
        if probe.exists():
            probe.rmdir()
    return None


class Partitions:
    """Groups of processes that can be cut off the network and healed, by name."""

    def __init__(self) -> None:
        mount = cgroup2_root()
        assert mount is not None, unavailable()
        self.mount = mount
        self.root = mount / f"crypto-ml-partition-{os.getpid()}"
        self.root.mkdir(exist_ok=True)
        self.comment = f"crypto-ml-partition-{os.getpid()}"
        self.marks: dict[str, int] = {}
        self.cut_now: set[str] = set()

    def _group(self, name: str) -> Path:
        if name not in self.marks:
            self.marks[name] = 0x100 + len(self.marks)
            (self.root / name).mkdir(exist_ok=True)
            _iptables("-t", "mangle", "-A", "OUTPUT", "-m", "cgroup", "--path",
                      f"/{self.root.relative_to(self.mount)}/{name}",
                      *self._tag(), "-j", "CONNMARK", "--set-mark", hex(self.marks[name]))
        return self.root / name

    def _tag(self) -> list[str]:
        return ["-m", "comment", "--comment", self.comment]

    def command(self, name: str, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside group ``name`` (made now): what :meth:`cut` cuts off."""
        procs = self._group(name) / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {shlex.quote(str(procs))} && exec "$@"', "sh", *cmd]

    def _drop_rule(self, name: str) -> list[str]:
        return ["OUTPUT", "-m", "connmark", "--mark", hex(self.marks[name]), *self._tag(),
                "-j", "DROP"]

    def cut(self, name: str) -> None:
        """Drop every packet of group ``name``'s connections, both ways, from now on."""
        _iptables("-I", *self._drop_rule(name))
        self.cut_now.add(name)

    def heal(self, name: str) -> None:
        if name in self.cut_now:
            _iptables("-D", *self._drop_rule(name))
            self.cut_now.discard(name)

    def close(self) -> None:
        """Heal all, delete every rule this process made, remove the (empty) groups."""
        for table in ("filter", "mangle"):
            rules = _iptables("-t", table, "-S", "OUTPUT", check=False).stdout.splitlines()
            for rule in rules:
                if self.comment in rule and rule.startswith("-A "):
                    _iptables("-t", table, "-D", *shlex.split(rule)[1:], check=False)
        self.cut_now.clear()
        for group in [*self.root.glob("*/"), self.root]:
            # one with a process still in it stays until that process ends
            with contextlib.suppress(OSError):
                group.rmdir()
