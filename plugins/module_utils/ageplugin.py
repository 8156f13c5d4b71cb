# Copyright: nixfleet.sops contributors
# MIT License
"""The client side of the age plugin protocol (c2sp.org/age-plugin), batched.

A plugin ``age-plugin-<name>`` found on PATH (as age and sops find it) is run
once per *session*, and one session carries many files: ``recipient-v1``
wraps any number of file keys to one recipient, ``identity-v1`` tries any
number of files' stanzas (file indexes) with the plugin's identities. So a
fleet operation starts each plugin once per phase, and a hardware key asks
for its PIN once (``request-secret`` is answered from a :class:`SecretSource`,
never from a terminal: modules have none).

Controller side; standard library only. Errors never contain file keys or
secrets; a plugin's own messages are kept in :attr:`PluginUI.messages`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from typing import IO

from .age import AgeKeyError, redact
from .agefile import AgeFormatError, LineReader, Stanza, read_stanza

DEFAULT_TIMEOUT = 600.0  # a hardware key may wait for a touch; a hung plugin must still end


class PluginError(AgeKeyError):
    """A plugin is missing, failed, or broke the protocol. Names the plugin, never key material."""


class SecretSource:
    """A secret given as a (no_log) value or produced by a command, asked for at most once.

    Used for the passphrase of protected identity files and SSH keys, and for
    a plugin's ``request-secret`` (a YubiKey PIN). The command's standard
    output, less one trailing newline, is the secret; ``calls`` counts how
    often it ran.
    """

    def __init__(self, value: str | bytes | None = None, command: str | None = None, what: str = "passphrase") -> None:
        self._value = value.encode("utf-8") if isinstance(value, str) else value
        self.command = command or None
        self.what = what
        self.calls = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SecretSource({self.what}, {'value' if self._value is not None else self.command and 'command'})"

    def __bool__(self) -> bool:
        return self._value is not None or self.command is not None

    def get(self) -> bytes:
        """The secret; runs the command the first time only. Raises AgeKeyError when none can be had."""
        with self._lock:
            if self._value is None:
                if not self.command:
                    raise AgeKeyError(f"no {self.what} was given")
                self._value = self._run()
            return self._value

    def _run(self) -> bytes:
        self.calls += 1
        try:
            proc = subprocess.run(shlex.split(self.command or ""), capture_output=True, timeout=120, check=False)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise AgeKeyError(f"the {self.what} command could not run ({type(exc).__name__})") from None
        if proc.returncode != 0:
            raise AgeKeyError(f"the {self.what} command failed (exit status {proc.returncode})")
        out = proc.stdout
        out = out[:-2] if out.endswith(b"\r\n") else out[:-1] if out.endswith(b"\n") else out
        if not out:
            raise AgeKeyError(f"the {self.what} command printed nothing")
        return out


class PluginUI:
    """How requests from a plugin are answered when there is no terminal.

    ``request-secret`` gets ``secret`` (a SecretSource, asked once per run);
    ``request-public`` gets ``public``; ``confirm`` is answered yes only with
    ``confirm=True`` (else ``fail``, which a plugin treats as "no UI").
    ``msg`` texts are collected in ``messages`` for the caller to show.
    """

    def __init__(self, secret: SecretSource | None = None, public: str | None = None, confirm: bool = False) -> None:
        self.secret = secret
        self.public = public
        self.confirm = confirm
        self.messages: list[str] = []

    def answer(self, name: str, request: Stanza) -> Stanza:
        """The reply to one phase-2 request that is not a result (msg, confirm, request-*)."""
        text = request.body.decode("utf-8", "replace")
        if request.type == "msg":
            self.messages.append(f"age-plugin-{name}: {redact(text)}")
            return Stanza("ok")
        if request.type == "confirm":
            self.messages.append(f"age-plugin-{name} asked to confirm: {redact(text)}")
            return Stanza("ok", ("yes",)) if self.confirm else Stanza("fail")
        if request.type == "request-public":
            return Stanza("ok", (), self.public.encode()) if self.public is not None else Stanza("fail")
        if request.type == "request-secret":
            if not self.secret:
                self.messages.append(f"age-plugin-{name} asked for a secret (PIN) and none was given")
                return Stanza("fail")
            try:
                return Stanza("ok", (), self.secret.get())
            except AgeKeyError as exc:
                self.messages.append(f"age-plugin-{name}: {exc}")
                return Stanza("fail")
        return Stanza("unsupported")


def plugin_path(name: str) -> str:
    """The ``age-plugin-<name>`` binary on PATH; PluginError when it is missing."""
    if os.sep in name or (os.altsep and os.altsep in name):
        raise PluginError(f"invalid age plugin name {name!r}")
    # Only absolute PATH entries: a plugin is never taken from the working directory (age does the same).
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if os.path.isabs(p))
    found = shutil.which(f"age-plugin-{name}", path=path)
    if found is None:
        raise PluginError(f"age-plugin-{name} is not on PATH: install the age plugin '{name}' to use its keys")
    return found


class _Session:
    """One running plugin process: phase 1 written at once, phase 2 read and answered."""

    def __init__(self, name: str, machine: str, timeout: float) -> None:
        self.name = name
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                [plugin_path(name), f"--age-plugin={machine}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            )
        except OSError as exc:
            self._stderr.close()
            raise PluginError(f"age-plugin-{name} could not start: {exc.strerror}") from None
        self._timer = threading.Timer(timeout, self.proc.kill)
        self._timer.daemon = True
        self._timer.start()
        self._reader = LineReader(self.proc.stdout)

    def send(self, stanzas: Sequence[Stanza]) -> None:
        """Write stanzas to the plugin (phase 1 in one write, or one reply)."""
        if self.proc.stdin is None:
            raise AssertionError("internal error: self.proc.stdin is not None does not hold")
        try:
            self.proc.stdin.write(b"".join(s.encode() for s in stanzas))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self.failure("stopped reading its input") from None

    def read(self) -> Stanza:
        """The next command from the plugin."""
        try:
            return read_stanza(self._reader)
        except EOFError:
            raise self.failure("ended without finishing the protocol") from None
        except AgeFormatError:
            raise self.failure("sent a malformed message") from None

    def failure(self, what: str) -> PluginError:
        """A PluginError naming the plugin, with the last line of its stderr (redacted)."""
        self.close()
        self._stderr.seek(0)
        tail = [ln for ln in self._stderr.read()[-2000:].decode("utf-8", "replace").splitlines() if ln.strip()]
        detail = f": {redact(tail[-1].strip())}" if tail else ""
        return PluginError(f"age-plugin-{self.name} {what}{detail}")

    def close(self) -> None:
        """End the process (after a finished protocol it exits by itself)."""
        self._timer.cancel()
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def _index(arg: str, count: int, what: str, session: _Session) -> int:
    if not arg.isdigit() or int(arg) >= count:
        raise session.failure(f"sent a {what} for an unknown file index")
    return int(arg)


def wrap_file_keys(
    name: str, recipient: str, file_keys: Sequence[bytes], ui: PluginUI | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[list[Stanza]]:
    """``recipient-v1``: wrap every file key to ``recipient`` in one plugin process.

    Returns the stanzas of each file key, in order. Raises PluginError when the
    plugin reports an error or leaves a file key without a stanza.
    """
    ui = ui or PluginUI()
    session = _Session(name, "recipient-v1", timeout)
    phase1 = [Stanza("add-recipient", (recipient,))]
    phase1 += [Stanza("wrap-file-key", (), key) for key in file_keys]
    session.send([*phase1, Stanza("extension-labels"), Stanza("done")])
    out: list[list[Stanza]] = [[] for _unused in file_keys]
    errors: list[str] = []
    while True:
        cmd = session.read()
        if cmd.type == "done":
            break
        if cmd.type == "recipient-stanza":
            if len(cmd.args) < 2:
                raise session.failure("sent a recipient stanza without a type")
            out[_index(cmd.args[0], len(file_keys), "stanza", session)].append(
                Stanza(cmd.args[1], cmd.args[2:], cmd.body))
            session.send([Stanza("ok")])
        elif cmd.type in ("labels", "error"):
            if cmd.type == "error":
                errors.append(redact(cmd.body.decode("utf-8", "replace")))
            session.send([Stanza("ok")])
        else:
            session.send([ui.answer(name, cmd)])
    session.close()
    if errors:
        raise PluginError(f"age-plugin-{name} could not wrap to {recipient}: {'; '.join(errors)}")
    if any(not s for s in out):
        raise PluginError(f"age-plugin-{name} returned no stanza for a file key (recipient {recipient})")
    return out


def unwrap_file_keys(
    name: str, identities: Sequence[str], files: Sequence[Sequence[Stanza]], ui: PluginUI | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[int, bytes]:
    """``identity-v1``: try every file's stanzas with the plugin's identities in one process.

    Returns {file index: file key} for the files the plugin opened (the others
    it could not, which the protocol leaves implicit). Errors the plugin
    reports go to ``ui.messages``; a plugin that cannot run raises PluginError.
    """
    ui = ui or PluginUI()
    session = _Session(name, "identity-v1", timeout)
    phase1 = [Stanza("add-identity", (ident,)) for ident in identities]
    for index, stanzas in enumerate(files):
        phase1 += [Stanza("recipient-stanza", (str(index), s.type, *s.args), s.body) for s in stanzas]
    session.send([*phase1, Stanza("done")])
    keys: dict[int, bytes] = {}
    while True:
        cmd = session.read()
        if cmd.type == "done":
            break
        if cmd.type == "file-key":
            if len(cmd.args) != 1:
                raise session.failure("sent a malformed file-key")
            keys[_index(cmd.args[0], len(files), "file key", session)] = cmd.body
            session.send([Stanza("ok")])
        elif cmd.type == "error":
            ui.messages.append(f"age-plugin-{name}: {' '.join(cmd.args)}: "
                               f"{redact(cmd.body.decode('utf-8', 'replace'))}")
            session.send([Stanza("ok")])
        else:
            session.send([ui.answer(name, cmd)])
    session.close()
    return keys
