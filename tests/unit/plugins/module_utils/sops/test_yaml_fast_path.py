"""The YAML store reads the ``sops:`` block without the full YAML parser when it is laid out as sops writes it;
what that shortcut reads must be what the full parser reads, and the block must be found where sops put it."""

from __future__ import annotations

import random

import pyrage
import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils.sops.stores import yaml as store

ENC = pyrage.encrypt(b"k" * 32, [pyrage.x25519.Identity.generate().to_public()], armored=True).decode()
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def _lines(text: str, indent: int) -> str:
    return "".join(" " * indent + line + "\n" for line in text.rstrip("\n").split("\n"))


# Layouts real files have: sops 3.8+ (yaml.v3, 4 spaces), sops before 3.8 (yaml.v2, '-   ' items), and
# hand-edited two-space indentation; with empty lines inside the armored block.
LAYOUTS = {
    "sops-3.9": "sops:\n    age:\n        - recipient: R\n          enc: |\n" + _lines(ENC, 12)
                + "    lastmodified: \"2026-01-01T00:00:00Z\"\n    mac: ENC[AES256_GCM,data:x,type:str]\n"
                  "    unencrypted_suffix: _unencrypted\n    version: 3.9.0\n",
    "sops-3.7": "sops:\n    kms: []\n    age:\n    -   recipient: R\n        enc: |\n" + _lines(ENC, 12)
                + "    lastmodified: '2021-01-01T00:00:00Z'\n    version: 3.7.1\n",
    "two-spaces": "sops:\n  age:\n  - recipient: R\n    enc: |\n" + _lines(ENC, 6) + "  version: 3.9.0\n",
    "blank-lines": "sops:\n    age:\n        - recipient: R\n          enc: |\n\n" + _lines(ENC, 12).replace(
        "\n", "\n\n", 1) + "\n    version: 3.9.0\n",
    "strip-chomp": "sops:\n    age:\n        - recipient: R\n          enc: |-\n" + _lines(ENC, 12)
                   + "    version: 3.9.0\n",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fast_read_of_each_layout_is_what_the_full_parser_reads(layout):
    block = LAYOUTS[layout].replace("R", RECIPIENT, 1)
    fast = store._fast_block(block)
    assert fast == store._load_block(block, None, 0)
    assert fast["sops"]["age"][0]["recipient"] == RECIPIENT
    assert fast["sops"]["age"][0]["enc"].split() == ENC.split()


@pytest.mark.parametrize("bad", [
    "          enc: |\n            x\n           y\n",   # text indented less than the block's first line
    "          enc: |\n            x\n\t\n",             # a tab is not indentation
    "          enc: |\n            x\n              \n            y\n",  # spaces only: content, or an error
    "          enc: \"a\\nb\"\n",                         # escapes: left to the full parser
])
def test_what_the_shortcut_does_not_read_it_leaves_to_the_full_parser(bad):
    block = "sops:\n    age:\n        - recipient: " + RECIPIENT + "\n" + bad + "    version: 3.9.0\n"
    with pytest.raises(store._Bail):
        store._fast_block(block)
    data = ("a: ENC[AES256_GCM,data:x,type:str]\n" + block).encode()
    assert store.YamlStore().find_metadata(data)[1] == (store._load_block(block, None, 0) or {}).get("sops")


def test_blocks_are_found_at_the_top_level_only_and_end_at_the_next_top_level_line():
    block = LAYOUTS["sops-3.9"].replace("R", RECIPIENT, 1)
    doc = "a: |\n    sops:\n    b\nc: sops:\n" + block
    text = doc + "# a comment\n---\n" + doc.rstrip("\n")
    spans, meta = store.YamlStore().find_metadata(text.encode())
    assert [text[s:e] for s, e in spans] == [block, block.rstrip("\n")]
    assert meta == store._fast_block(block)["sops"]
    assert store.YamlStore().find_metadata(b"a: 1\nnot_sops:\n  x: 1\n") == ([], None)


def test_every_block_the_shortcut_reads_it_reads_as_the_full_parser_does():
    """Damaged and hand-edited blocks (seeded mutations of the layouts above): the shortcut either leaves
    a block to the full parser or gives exactly what the full parser gives."""
    rng = random.Random(20261202)
    pieces = [" ", "  ", "\t", "", "x", "- ", "-   ", "|", "|-", "#", "   ", "enc: |", "k: v", "\r", "'", '"', "? ",
              "&a ", "*a", "[]", "{}", "null", "~", "1", "true"]
    read = 0
    for _unused in range(3000):
        lines = rng.choice(sorted(LAYOUTS.values())).replace("R", RECIPIENT, 1).split("\n")
        for _unused2 in range(rng.randint(0, 4)):
            j = rng.randrange(len(lines))
            op = rng.randrange(5)
            if op == 0:
                lines[j] = rng.choice(pieces) + lines[j]
            elif op == 1:
                lines.insert(j, " " * rng.randint(0, 14) + rng.choice(pieces) * rng.randint(0, 2))
            elif op == 2:
                lines[j] = lines[j][rng.randint(0, 6):]
            elif op == 3:
                lines[j] += rng.choice(pieces)
            else:
                del lines[j]
        block = "\n".join(lines)
        try:
            fast = store._fast_block(block)
        except store._Bail:
            continue
        try:
            full = store._load_block(block, None, 0)
        except Exception as exc:  # noqa: BLE001 - a block the full parser refuses must not be read by the shortcut
            full = type(exc).__name__
        assert fast == full, block
        read += 1
    assert read > 500  # the shortcut does read most undamaged and lightly damaged blocks
