"""Headless Chromium for tests that look at a page the collection writes: screenshots and the DOM after scripts.

Chromium is a Debian package (`make deps-test` installs it); a test that needs it fails, not skips, without it.
Each call gets its own profile directory so parallel runs do not share one.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """Path of the chromium binary; fails the test when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed; run `make test` (it installs it)")
    return found


def _profile(tmp_path: Path, name: str) -> Path:
    profile = tmp_path / f"profile-{name}"
    profile.mkdir()
    return profile


def screenshot(url: str, png: str, tmp_path: Path, window_size: str = "900,1300") -> None:
    """Render ``url`` (a path is a local file) into ``png``."""
    url = url if "://" in url else "file://" + os.path.abspath(url)
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={_profile(tmp_path, os.path.basename(png))}",
                    f"--screenshot={png}", f"--window-size={window_size}", url],
                   capture_output=True, timeout=120, check=True)
    assert os.path.getsize(png) > 10_000


def dump_dom(url: str, tmp_path: Path, name: str = "dom") -> str:
    """The page's DOM after its scripts ran, as HTML text."""
    url = url if "://" in url else "file://" + os.path.abspath(url)
    out = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={_profile(tmp_path, name)}", "--dump-dom",
                          url], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def png_stats(png: str) -> tuple[int, int, float]:
    """(width, height, share of non-zero bytes in the filtered image data) of a PNG, with zlib only.

    A blank or one-colour page filters to almost nothing but zeros (each row equals the one above), so the
    share is ~0; a page with text and tables is well above 1%. Cheaper than decoding every pixel in Python.
    """
    data = Path(png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            width, height = struct.unpack(">II", data[pos + 8:pos + 16])
        elif kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width, height, 1 - raw.count(0) / max(len(raw), 1)


class Page(HTMLParser):
    """Ids, in-page links, filterable rows (id -> attributes) and script tags of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.links: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}
        self.scripts = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if tag == "tr" and "data-sev" in a:
            self.rows[a.get("id") or f"#{len(self.rows)}"] = a
        self.scripts += tag == "script"
