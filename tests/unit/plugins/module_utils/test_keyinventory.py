"""keyinventory.py: recording keys and finding overdue ones."""

from __future__ import annotations

import datetime

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age
from ansible_collections.nixfleet.sops.plugins.module_utils import keyinventory as ki


def test_record_is_idempotent_and_keeps_first_date(tmp_path):
    r = age.recipient_from_identity(age.generate_identity())
    assert ki.record(str(tmp_path), "griefling", "host", r, host="griefling", created="2026-01-01")
    assert not ki.record(str(tmp_path), "griefling", "host", r, host="griefling", created="2026-06-01")
    (entry,) = ki.load(str(tmp_path))
    assert entry.created == "2026-01-01" and entry.recipient == r


def test_new_recipient_resets_date(tmp_path):
    r1 = age.recipient_from_identity(age.generate_identity())
    r2 = age.recipient_from_identity(age.generate_identity())
    ki.record(str(tmp_path), "griefling", "host", r1, created="2026-01-01")
    assert ki.record(str(tmp_path), "griefling", "host", r2, created="2026-06-01")
    (entry,) = ki.load(str(tmp_path))
    assert entry.recipient == r2 and entry.created == "2026-06-01"


def test_check_mode_writes_nothing(tmp_path):
    r = age.recipient_from_identity(age.generate_identity())
    assert ki.record(str(tmp_path), "a", "user", r, check_mode=True)
    assert not (tmp_path / ".nixfleet").exists()


def test_bad_kind_and_recipient(tmp_path):
    with pytest.raises(ki.InventoryError, match="unknown key kind"):
        ki.record(str(tmp_path), "a", "robot", "age1x")
    with pytest.raises(age.AgeKeyError):
        ki.record(str(tmp_path), "a", "host", "age1notvalid")
    assert not (tmp_path / ".nixfleet").exists()


def test_overdue_by_policy(tmp_path):
    r = age.recipient_from_identity(age.generate_identity())
    ki.record(str(tmp_path), "old", "host", r, created="2025-01-01")
    ki.record(str(tmp_path), "young", "host", age.recipient_from_identity(age.generate_identity()),
              created="2026-11-01")
    ki.record(str(tmp_path), "glass", "break-glass", age.recipient_from_identity(age.generate_identity()),
              created="2020-01-01")
    found = ki.overdue(ki.load(str(tmp_path)), {"host": 365}, today=datetime.date(2026, 11, 25))
    assert [f["anchor"] for f in found] == ["old"]
    assert found[0]["age_days"] > 365


def test_remove(tmp_path):
    r = age.recipient_from_identity(age.generate_identity())
    ki.record(str(tmp_path), "a", "user", r)
    assert ki.remove(str(tmp_path), "a")
    assert not ki.remove(str(tmp_path), "a")
    assert ki.load(str(tmp_path)) == []


def test_malformed_inventory_names_file(tmp_path):
    (tmp_path / ".nixfleet").mkdir()
    (tmp_path / ".nixfleet" / "keys.yaml").write_text("keys: [\n")
    with pytest.raises(ki.InventoryError, match="keys.yaml: not valid YAML"):
        ki.load(str(tmp_path))
