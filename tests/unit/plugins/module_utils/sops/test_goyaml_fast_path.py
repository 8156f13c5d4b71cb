"""The emitter's shortcuts (armored age files, age entries) agree with yaml.v3's full analysis and general path."""

from __future__ import annotations

import pyrage
from ansible_collections.nixfleet.sops.plugins.module_utils.sops.stores import goyaml


def test_armored_age_files_take_the_literal_shortcut_that_the_full_analysis_agrees_with():
    recipients = [pyrage.x25519.Identity.generate().to_public() for _unused in range(5)]
    for n in range(300):
        enc = pyrage.encrypt(bytes([n % 256]) * 32, [recipients[n % 5]], armored=True).decode()
        assert goyaml._AGE_ARMOR_RE.fullmatch(enc)
        assert goyaml._style_full(enc, False) == "literal" == goyaml._style(enc, False)


def test_other_strings_still_get_the_full_analysis():
    for value in ["plain", "needs: quoting", "'quoted'", "multi\nline\n", "-----BEGIN AGE ENCRYPTED FILE-----"]:
        assert goyaml._style(value, False) == goyaml._style_full(value, False)
        assert goyaml._style(value, True) == goyaml._style_full(value, True)


def test_age_entries_written_directly_are_what_the_general_emitter_writes():
    recipients = [pyrage.x25519.Identity.generate().to_public() for _unused in range(3)]
    armors = [pyrage.encrypt(bytes([n]) * 32, [recipients[n % 3]], armored=True).decode() for n in range(6)]
    odd_recipients = [str(recipients[0]), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 host", "age1yubikey1qgz", "needs: quoting",
                      "'quoted'", "", "two\nlines", " leading", "#hash", "-dash"]
    odd_encs = armors + [a.replace("\n", "\n\n", 1) for a in armors[:2]] + [armors[0][:-1], " " + armors[1], "plain"]
    direct = 0
    for recipient in odd_recipients:
        for enc in odd_encs:
            for item in ({"recipient": recipient, "enc": enc}, {"enc": enc, "recipient": recipient}):
                for indent, start in ((8, "        - "), (4, "    -   ")):
                    fast, general = goyaml._Out(), goyaml._Out()
                    if goyaml._emit_age_entry(fast, item, indent, start):
                        direct += 1
                        goyaml._emit_mapping(general, item, indent + 2, start)
                        assert "\n".join(fast.lines) == "\n".join(general.lines), item
    assert direct >= 2 * 6 * 2  # entries of two strings (sops' own among them) take the direct path
