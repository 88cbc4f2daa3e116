"""A real board (a Raspberry Pi...) over SSH, with the system ``ssh``/``scp`` binaries.

Host keys are checked, never accepted silently: the key must be in the known_hosts file (the
user's ``~/.ssh/known_hosts`` or ``known_hosts=``). Authentication is by key only (BatchMode), so
nothing ever waits for a password. Each run copies the runner, the model and the input to a fresh
``mktemp -d`` folder, runs there, fetches the output and removes the folder.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edgekit.errors import TargetError, UsageError
from runtimes.targets import Target, run_command

# ssh's own failures (exit code 255), by the words it uses, -> a one-line message and a fix.
_UNKNOWN_KEY = (
    "Host key verification failed",
    "No ED25519 host key is known",
    "host key is known",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
)
_UNREACHABLE = (
    "Connection refused",
    "Connection timed out",
    "timed out",
    "No route to host",
    "Could not resolve hostname",
    "Network is unreachable",
    "Connection closed",
    "Connection reset",
)


class SshTarget(Target):
    def __init__(
        self,
        host: str,
        user: str | None = None,
        port: int = 22,
        *,
        key_file: str | None = None,
        known_hosts: str | None = None,
        remote_python: str = "python3",
        ssh_options: list[str] | None = None,
        connect_timeout: int = 10,
        timeout: float = 600.0,
        arch: str | None = None,
    ) -> None:
        self.host, self.user, self.port = host, user, port
        self.name = f"ssh://{user + '@' if user else ''}{host}{'' if port == 22 else f':{port}'}"
        self.key_file = key_file
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else Path.home() / ".ssh/known_hosts"
        self.remote_python = remote_python
        self.extra = list(ssh_options or [])
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.expected_arch = arch

    @classmethod
    def from_url(cls, url: str, **options: object) -> SshTarget:
        """``ssh://user@host[:port][?python=/path/to/python3]`` (also ``user@host[:port]``, what
        ``PI_HOST`` holds); ``python=`` names the board's interpreter (e.g. a venv with the engines)."""
        parts = urlsplit(url if url.startswith("ssh://") else f"ssh://{url}")
        query = parse_qs(parts.query)
        unknown = set(query) - {"python"}
        if unknown:
            raise UsageError(
                f"unknown option {', '.join(sorted(unknown))} in {url!r}", "only ?python=PATH is known"
            )
        if "python" in query:
            options = {"remote_python": query["python"][-1], **options}
        try:
            port = parts.port or 22
        except ValueError as exc:
            raise UsageError(f"bad port in {url!r}", "write ssh://user@host:PORT") from exc
        if not parts.hostname:
            raise UsageError(f"no host in {url!r}", "write ssh://user@host[:port]")
        return cls(parts.hostname, parts.username, port, **options)  # type: ignore[arg-type]

    # --- commands ------------------------------------------------------------------------------

    def _options(self) -> list[str]:
        opts = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "LogLevel=ERROR",
        ]
        if self.key_file:
            opts += ["-i", str(Path(self.key_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        return opts + self.extra

    def _login(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _remote(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"{self.user + '@' if self.user else ''}{host}:{path}"

    def ssh(self, command: str, timeout: float) -> str:
        """Run one remote shell ``command`` (already quoted); its stdout, or a TargetError."""
        proc = run_command(
            ["ssh", *self._options(), "-p", str(self.port), self._login(), command],
            timeout,
            f"ssh to {self.name}",
        )
        if proc.returncode == 255:
            raise self._ssh_error(proc.stderr)
        if proc.returncode == 127:
            first = command.split()[0] if command.split() else command
            raise TargetError(
                f"{self.name}: a command is missing on the host ({proc.stderr.strip()[:120] or first})",
                f"install Python 3 with numpy there (apt install python3-numpy), or pass the "
                f"remote Python's path (now {self.remote_python!r})",
            )
        if proc.returncode != 0 and not proc.stdout.strip():
            raise self._crashed(proc.returncode, proc.stderr)
        return proc.stdout

    def scp(self, sources: list[str], dest: str, timeout: float) -> None:
        proc = run_command(
            ["scp", "-q", *self._options(), "-P", str(self.port), *sources, dest],
            timeout,
            f"scp to/from {self.name}",
        )
        if proc.returncode != 0:
            raise self._ssh_error(proc.stderr)

    def _ssh_error(self, stderr: str) -> TargetError:
        text = stderr.strip()
        last = (text.splitlines() or ["ssh failed"])[-1][:200]
        if any(word in text for word in _UNKNOWN_KEY):
            return TargetError(
                f"{self.name}: the host key is not in {self.known_hosts} (or has changed)",
                f"check the fingerprint, then: ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}",
            )
        if any(word in text for word in _UNREACHABLE):
            return TargetError(
                f"{self.name}: cannot reach the host ({last}; ConnectTimeout={self.connect_timeout}s)",
                "check that the board is on, on the network, and runs sshd on that port",
            )
        if "Permission denied" in text:
            return TargetError(
                f"{self.name}: key authentication refused ({last})",
                "add your public key to ~/.ssh/authorized_keys on the host, or pass key_file",
            )
        return TargetError(f"{self.name}: ssh failed ({last})", "try `ssh -v` by hand with the same host")

    # --- the Target interface --------------------------------------------------------------------

    def _execute(
        self, files: list[Path], argv: list[str], fetch: str | None, local_dir: Path, timeout: float
    ) -> str:
        quick = self.connect_timeout + 60.0
        workdir = self.ssh("mktemp -d /tmp/edgekit.XXXXXX", quick).strip()
        if not workdir.startswith("/tmp/edgekit."):
            raise TargetError(
                f"{self.name}: mktemp gave {workdir[:80]!r}", "the host needs a POSIX shell and mktemp"
            )
        try:
            self.scp([str(f) for f in files], self._remote(workdir + "/"), timeout)
            command = " ".join(shlex.quote(a) for a in [self.remote_python, "runner.py", *argv])
            stdout = self.ssh(f"cd {shlex.quote(workdir)} && {command}", timeout)
            if fetch and '"ok": true' in stdout:
                self.scp([self._remote(f"{workdir}/{fetch}")], str(local_dir / fetch), timeout)
            return stdout
        finally:
            with contextlib.suppress(TargetError):  # never hide the real failure behind the clean-up's
                self.ssh(f"rm -rf {shlex.quote(workdir)}", quick)
