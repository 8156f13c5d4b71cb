# Copyright: nixfleet.sops contributors
# MIT License
"""The printable break-glass page: HTML with print styles, the key as a QR code and as checked lines.

One page holds the whole identity, or one SLIP-39 share of it. The QR code
is an inline SVG made by ``segno`` (pure Python, controller only); the
lines come from ``paperkey``. Every page says what it is, for which fleet
and recipient, when it was made, how to check a line, how to run the drill,
how to recover, and how to keep it. Public facts (recipient, share number)
are also in ``<meta>`` tags so a later run can tell what a page is without
reading its secret.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from . import paperkey
from .errors import NixfleetError

_META_RE = re.compile(r'<meta name="nixfleet-([a-z-]+)" content="([^"]*)">')

_STYLE = """
@page { size: A4; margin: 14mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; font-size: 10.5pt; color: #000;
       background: #fff; margin: 0 auto; max-width: 182mm; padding: 6mm 0; line-height: 1.35; }
h1 { font-size: 17pt; margin: 0 0 2mm 0; }
h2 { font-size: 12pt; margin: 5mm 0 1.5mm 0; border-bottom: 0.4mm solid #000; }
.warn { border: 0.6mm solid #000; padding: 2mm 3mm; font-weight: bold; margin: 3mm 0; }
.facts td { padding: 0.5mm 3mm 0.5mm 0; vertical-align: top; }
.mono, .key td { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, monospace; }
.recipient { word-break: break-all; font-size: 9pt; }
.top { display: flex; gap: 8mm; align-items: flex-start; }
.qr svg { width: 60mm; height: 60mm; display: block; }
.key { border-collapse: collapse; font-size: 15pt; margin-top: 2mm; }
.key td { padding: 1.2mm 4mm 1.2mm 0; white-space: pre; }
.key td.n { color: #444; }
.key td.sum { padding-left: 6mm; border-left: 0.3mm solid #000; }
.key .prefix td { font-size: 11pt; }
ol { margin: 1mm 0; padding-left: 6mm; }
li { margin: 0.8mm 0; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 9pt; }
@media print { body { padding: 0; } .noprint { display: none; } h2, .key, .top { break-inside: avoid; } }
"""


class PaperPageError(NixfleetError, ValueError):
    """A page could not be made (QR library missing) or read back; the message says which."""


def _qr_svg(payload: str) -> str:
    try:
        import segno
    except ImportError:
        raise PaperPageError("the printable page needs the Python package segno on the controller: "
                             "pip install segno") from None
    # Error correction Q: a page that got folded or stained still scans.
    # omitsize: a viewBox, so the print size set in CSS scales the code instead of cropping it.
    return segno.make(payload, error="q", micro=False).svg_inline(scale=5, dark="#000", light="#fff", omitsize=True)


def _meta(facts: dict[str, str]) -> str:
    return "".join(f'<meta name="nixfleet-{k}" content="{html.escape(str(v))}">\n' for k, v in facts.items())


def _key_table(lines: Sequence[paperkey.PaperLine], prefix: str | None) -> str:
    rows = []
    if prefix:
        rows.append(f'<tr class="prefix"><td class="n"></td><td>{html.escape(prefix)}</td><td></td></tr>')
    for ln in lines:
        rows.append(f'<tr><td class="n">{ln.number}</td><td>{html.escape(" ".join(ln.groups))}</td>'
                    f'<td class="sum">{ln.checksum}</td></tr>')
    return '<table class="key">' + "".join(rows) + "</table>"


def _facts(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="facts">{body}</table>'


def _steps(items: Sequence[str]) -> str:
    return "<ol>" + "".join(f"<li>{i}</li>" for i in items) + "</ol>"


def _page(title: str, meta: dict[str, str], body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n{_meta(meta)}<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


_KEEP = [
    "Keep this page on paper (or stamp it into metal) in a place only the people who may recover the "
    "fleet can reach: a safe, a bank deposit box. No photo, no scan, no cloud copy, no password manager.",
    "Delete the file this page was printed from, on the machine that made it: <code>shred -u FILE</code>. "
    "Then check the printout (step 1 above) once more.",
]


def _check_step(example: paperkey.PaperLine) -> str:
    return (
        "Check every line: its last four characters are the start of the SHA-256 of the line number and "
        "its groups, one space apart. On any machine: "
        f"<code>printf '%s' '{html.escape(example.text)}' | sha256sum | cut -c1-4</code> prints "
        f"<code>{example.checksum}</code>. A line that gives anything else has a misprint or a typo."
    )


def identity_page(identity: str, recipient: str, fleet: str, date: str) -> str:
    """The page of a whole break-glass identity: QR code, checked lines, facts and instructions."""
    lines = paperkey.identity_lines(identity)
    cmd = "ansible-playbook playbooks/break_glass.yml"
    top = (
        f'<div class="top"><div class="qr">{_qr_svg(identity)}</div><div>'
        + _facts([("Fleet", html.escape(fleet)), ("Made on", html.escape(date)),
                  ("Recipient", f'<span class="mono recipient">{html.escape(recipient)}</span>'),
                  ("Anchor", "<code>&amp;break_glass</code> in .sops.yaml, a member of every creation rule")])
        + "</div></div>"
    )
    body = (
        f"<h1>Break-glass key of fleet {html.escape(fleet)}</h1>\n"
        '<div class="warn">SECRET. Whoever holds this page can read every secret of the fleet.</div>\n'
        f"{top}\n<h2>The key</h2>\n{_key_table(lines, paperkey.IDENTITY_PREFIX)}\n"
        "<p>The key is <code>AGE-SECRET-KEY-1</code> followed by the groups of lines 1 to "
        f"{len(lines)}, without spaces; the numbers in front and the checksums behind are not part of it.</p>\n"
        "<h2>Check, drill, recover</h2>\n"
        + _steps([
            _check_step(lines[0]),
            f"Drill, once a year: on the admin machine, in the secrets repository's checkout, run "
            f"<code>{cmd} --tags test</code> and type the lines when asked (number, groups, checksum), "
            "or scan the QR code. It proves the key opens every secrets file, decrypts no value, writes "
            "nothing but the date of the drill, and names any file the key cannot open.",
            f"Recovery, the day every admin key is lost: <code>{cmd} --tags recover "
            "-e nixfleet_break_glass_admin_key_file=~/.config/sops/age/keys.txt</code>, then type the key. "
            "A new admin key is written there (0600) and every file is rekeyed to it.",
            "Without the collection: put the key in a file only you can read, on a RAM disk (not in the "
            "shell history), use it, destroy it: <code>umask 077; cat &gt; /dev/shm/bg.txt</code> (type "
            "<code>AGE-SECRET-KEY-1</code> and the groups, Enter, Ctrl-D), then "
            "<code>SOPS_AGE_KEY_FILE=/dev/shm/bg.txt sops -d sops/shared.yaml; shred -u /dev/shm/bg.txt</code>",
        ])
        + "\n<h2>Keep it</h2>\n" + _steps(_KEEP)
    )
    meta = {"kind": "break-glass-identity", "fleet": fleet, "recipient": recipient, "date": date}
    return _page(f"Break-glass key – {fleet}", meta, body)


def share_page(mnemonic: str, index: int, count: int, threshold: int, recipient: str, fleet: str,
               date: str) -> str:
    """The page of SLIP-39 share ``index`` of ``count`` (any ``threshold`` recover the key)."""
    lines = paperkey.share_lines(mnemonic)
    cmd = "ansible-playbook playbooks/break_glass.yml"
    top = (
        f'<div class="top"><div class="qr">{_qr_svg(mnemonic)}</div><div>'
        + _facts([("Fleet", html.escape(fleet)), ("Made on", html.escape(date)),
                  ("Share", f"<b>{index} of {count}</b>; any <b>{threshold}</b> of the {count} recover the key"),
                  ("Recipient", f'<span class="mono recipient">{html.escape(recipient)}</span>')])
        + "</div></div>"
    )
    body = (
        f"<h1>Break-glass share {index} of {count} – fleet {html.escape(fleet)}</h1>\n"
        f'<div class="warn">SECRET. {threshold} of these shares together can read every secret of the fleet. '
        f"Fewer than {threshold} reveal nothing about the key. There is no passphrase: the words are all it "
        "takes, so keep each share with a different person or place.</div>\n"
        f"{top}\n<h2>The share (SLIP-39, {len(mnemonic.split())} words)</h2>\n{_key_table(lines, None)}\n"
        "<h2>Check, drill, recover</h2>\n"
        + _steps([
            _check_step(lines[0]).replace("groups", "words"),
            f"Drill, once a year: bring {threshold} shares together at the admin machine and run "
            f"<code>{cmd} --tags test -e nixfleet_break_glass_threshold={threshold}</code>; type each share "
            "when asked (the first four letters of a word are enough). It proves the key opens every secrets "
            "file, decrypts no value, and writes nothing but the date of the drill.",
            f"Recovery, the day every admin key is lost: <code>{cmd} --tags recover "
            f"-e nixfleet_break_glass_threshold={threshold} "
            "-e nixfleet_break_glass_admin_key_file=~/.config/sops/age/keys.txt</code>, then type the shares.",
            "Without the collection: any SLIP-39 tool (the reference one is <code>shamir recover</code> from "
            "the Python package shamir-mnemonic) gives back a 32-byte secret; it is the X25519 private key of "
            "the age identity (bech32, prefix <code>AGE-SECRET-KEY-</code>).",
        ])
        + "\n<h2>Keep it</h2>\n" + _steps(_KEEP)
    )
    meta = {"kind": "break-glass-share", "fleet": fleet, "recipient": recipient, "date": date,
            "share": f"{index}/{count}", "threshold": str(threshold)}
    return _page(f"Break-glass share {index} of {count} – {fleet}", meta, body)


def read_meta(text: str) -> dict[str, str]:
    """The public ``nixfleet-*`` facts of a page (recipient, kind, share) — never its key."""
    head = text.split("</head>", 1)[0]
    return {k: html.unescape(v) for k, v in _META_RE.findall(head)}
