"""Master keys of other kinds (pgp, kms, gcp_kms, azure_kv, hc_vault) beside age: kept as sops wrote them."""

from __future__ import annotations

import copy
import os

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as S
from ansible_collections.nixfleet.sops.plugins.module_utils.age import generate_identity, recipient_from_identity

IDS = [generate_identity() for _unused in range(3)]
RS = [recipient_from_identity(i) for i in IDS]
FP = "A1E86A445438DBC4960AEAFE979B07E1A56A53C2"
WHEN = "2026-12-01T15:58:24Z"
PGP = {"created_at": WHEN, "fp": FP,
       "enc": "-----BEGIN PGP MESSAGE-----\n\nhF4DvPqb0+NDGVwSAQdA\n=1r4b\n-----END PGP MESSAGE-----"}
KMS = {"arn": "arn:aws:kms:eu-west-1:111122223333:key/abcd", "role": "arn:aws:iam::111122223333:role/sops",
       "context": {"App": "x", "Environment": "prod"}, "created_at": WHEN, "enc": "AQICAHhkbXM=", "aws_profile": ""}
GCP = {"resource_id": "projects/p/locations/global/keyRings/r/cryptoKeys/k", "created_at": WHEN, "enc": "CiQAZ2Nw"}
AZ = {"vault_url": "https://v.vault.azure.net", "name": "sops-key", "version": "0123abcd", "created_at": WHEN,
      "enc": "YXp1cmU"}
VAULT = {"vault_address": "https://vault.example:8200", "engine_path": "transit", "key_name": "sops",
         "created_at": WHEN, "enc": "vault:v1:dmF1bHQ="}
FOREIGN = {"pgp": [PGP], "kms": [KMS], "gcp_kms": [GCP], "azure_kv": [AZ], "hc_vault": [VAULT]}
# How .sops.yaml names them.
RULE = {"pgp": FP.lower(), "kms": [{"arn": KMS["arn"], "role": KMS["role"]}], "gcp_kms": [GCP["resource_id"]],
        "azure_keyvault": "https://v.vault.azure.net/keys/sops-key/0123abcd",
        "hc_vault_transit_uri": "https://vault.example:8200/v1/transit/keys/sops"}
NAMES = ["pgp:" + FP, "kms:" + KMS["arn"] + "+" + KMS["role"], "gcp_kms:" + GCP["resource_id"],
         "azure_kv:https://v.vault.azure.net/keys/sops-key/0123abcd",
         "hc_vault:https://vault.example:8200/v1/transit/keys/sops"]
DATA = {"user": "alice", "password": "hunter2"}
NAME = {"yaml": "f.yaml", "json": "f.json", "dotenv": "f.env", "ini": "f.ini", "binary": "f.bin"}


def with_foreign(tmp_path, fmt: str, groups=None, foreign=None, threshold=None) -> str:
    """An engine-written file whose metadata also holds other master keys, in ``fmt``'s layout."""
    path = str(tmp_path / NAME[fmt])
    data = b"blob" if fmt == "binary" else ({"s": DATA} if fmt == "ini" else DATA)
    S.encrypt_file(path, data, groups or [RS[:1]], shamir_threshold=threshold)
    sf = S.load(path)
    sf.metadata.foreign = copy.deepcopy(foreign if foreign is not None else [FOREIGN])
    with open(path, "wb") as fh:
        fh.write(sf.store.emit(sf.encrypted_documents, sf.metadata.to_mapping()))
    return path


@pytest.mark.parametrize("fmt", list(NAME))
def test_other_master_keys_are_read_kept_and_written_back_in_every_format(tmp_path, fmt):
    path = with_foreign(tmp_path, fmt)
    sf = S.load(path)
    assert sf.recipients == [RS[:1]]
    assert sf.metadata.foreign_keys == [{k: [n.split(":", 1)[1]] for k, n in zip(FOREIGN, NAMES, strict=True)}]
    expected = S.load(path).decrypt([IDS[0]])
    # Adding an age recipient keeps every other master key, field for field.
    assert S.updatekeys(path, [RS[:2]], [IDS[0]]) == (True, {RS[1]}, set())
    after = S.load(path)
    assert after.metadata.foreign == [FOREIGN]
    assert after.decrypt([IDS[1]]) == expected
    # The rule naming them (in .sops.yaml's spellings) changes nothing more.
    assert S.updatekeys(path, [RS[:2]], [IDS[0]], foreign=[RULE]) == (False, set(), set())


def test_yaml_entries_keep_their_bytes_and_sops_layout(tmp_path):
    path = with_foreign(tmp_path, "yaml")
    before = open(path).read()
    block = before[before.index("    kms:"):before.index("    age:")]
    pgp = before[before.index("    pgp:"):before.index("    unencrypted_suffix:")]
    S.updatekeys(path, [RS[:2]], [IDS[0]])
    after = open(path).read()
    assert block in after and pgp in after
    keys = [line.split(":")[0].strip() for line in after[after.index("sops:"):].splitlines()
            if line.startswith("    ") and not line.startswith("     ")]
    # sops' stores.Metadata order: kms, gcp_kms, azure_kv, hc_vault, age, lastmodified, mac, pgp, …
    assert keys == ["kms", "gcp_kms", "azure_kv", "hc_vault", "age", "lastmodified", "mac", "pgp",
                    "unencrypted_suffix", "version"]
    assert "        - arn: " in after and after.index("role:") < after.index("context:") < after.index("aws_profile:")
    assert "enc: |-\n" in pgp  # the PGP armor has no final newline, as sops writes it


def test_dropped_when_the_rule_no_longer_names_them(tmp_path):
    path = with_foreign(tmp_path, "yaml")
    rule = dict(RULE)
    del rule["pgp"], rule["hc_vault_transit_uri"]
    changed, added, removed = S.updatekeys(path, [RS[:1]], [IDS[0]], foreign=[rule])
    assert changed and not added and removed == {NAMES[0], NAMES[4]}
    sf = S.load(path)
    assert set(sf.metadata.foreign[0]) == {"kms", "gcp_kms", "azure_kv"}
    assert "pgp:" not in open(path).read() and sf.decrypt([IDS[0]]) == DATA


def test_a_key_the_file_does_not_have_is_refused_naming_sops(tmp_path):
    path = with_foreign(tmp_path, "yaml")
    before = open(path, "rb").read()
    other = "0000111122223333444455556666777788889999"
    with pytest.raises(S.SopsError) as info:
        S.updatekeys(path, [RS[:2]], [IDS[0]], foreign=[{**RULE, "pgp": [FP, other]}])
    text = str(info.value)
    assert text.startswith(path + ":") and f"pgp:{other}" in text and f"sops updatekeys {path}" in text
    assert open(path, "rb").read() == before


def test_rotate_and_create_need_the_real_sops(tmp_path):
    path = with_foreign(tmp_path, "yaml")
    before = open(path, "rb").read()
    with pytest.raises(S.SopsError, match=f"sops rotate -i {path}") as info:
        S.rotate(path, [IDS[0]])
    assert FP in str(info.value)
    assert open(path, "rb").read() == before
    new = str(tmp_path / "new.yaml")
    with pytest.raises(S.SopsError, match="sops encrypt"):
        S.SopsFile.create(new, [RS[:1]], foreign=[{"pgp": [FP]}])
    assert not os.path.exists(new)
    S.SopsFile.create(new, [RS[:1]], foreign=[{}]).write()  # naming none is fine


def test_no_age_identity_says_the_other_keys_need_the_real_sops(tmp_path):
    path = with_foreign(tmp_path, "yaml", foreign=[{"pgp": [PGP]}])
    with pytest.raises(S.SopsNoIdentityError) as info:
        S.updatekeys(path, [RS[:2]], [IDS[2]])
    text = str(info.value)
    assert f"pgp key(s) {FP}" in text and "sops updatekeys" in text and RS[0] in text


def test_shamir_groups_keep_their_other_keys_while_their_shares_stay(tmp_path):
    groups = [RS[:1], RS[1:2]]
    path = with_foreign(tmp_path, "yaml", groups=groups, foreign=[{"pgp": [PGP]}, {}], threshold=2)
    text = open(path).read()
    assert text.index("        - pgp:") < text.index("          hc_vault: []") < text.index("          age:")
    # Same groups and threshold: the shares stay, so the PGP entry stays valid.
    assert S.updatekeys(path, [[RS[0], RS[2]], RS[1:2]], IDS[:2]) == (True, {RS[2]}, set())
    assert S.load(path).metadata.foreign == [{"pgp": [PGP]}, {}]
    assert S.load(path).decrypt([IDS[2], IDS[1]]) == DATA
    # A third group would split the key afresh: the kept PGP share would be stale.
    before = open(path, "rb").read()
    with pytest.raises(S.SopsError, match="only the real sops can wrap the new shares"):
        S.updatekeys(path, [[RS[0], RS[2]], RS[1:2], RS[:1]], IDS[:2])
    assert open(path, "rb").read() == before
    # Unless the rule drops it at the same time.
    changed, _unused, removed = S.updatekeys(path, [[RS[0], RS[2]], RS[1:2], RS[:1]], IDS[:2], foreign=[{}, {}, {}])
    assert changed and removed == {"pgp:" + FP}
    assert S.load(path).decrypt([IDS[0], IDS[1]]) == DATA


def test_a_group_held_only_by_other_keys_is_kept_when_the_rule_keeps_it(tmp_path):
    path = with_foreign(tmp_path, "yaml", groups=[RS[:1], RS[1:2]], foreign=[{}, {"pgp": [PGP]}], threshold=2)
    sf = S.load(path)
    sf.metadata.key_groups[1] = []  # group 2: the PGP key alone
    with open(path, "wb") as fh:
        fh.write(sf.store.emit(sf.encrypted_documents, sf.metadata.to_mapping()))
    with pytest.raises(S.SopsNoIdentityError, match="group 2: no age recipient"):
        S.updatekeys(path, [RS[:2], []], IDS, foreign=[{}, {"pgp": [FP]}])
