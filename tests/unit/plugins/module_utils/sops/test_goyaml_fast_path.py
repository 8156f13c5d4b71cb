"""The emitter's shortcut for armored age files agrees with yaml.v3's full style analysis."""

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
