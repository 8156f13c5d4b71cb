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


def test_alias_bomb_is_refused_fast(tmp_path):
    import time

    (tmp_path / ".nixfleet").mkdir()
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, "
                     f"*{prev}, *{prev}, *{prev}, *{prev}]")
    lines.append("keys: *i")
    (tmp_path / ".nixfleet" / "keys.yaml").write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ki.InventoryError, match="keys.yaml: YAML aliases are not allowed"):
        ki.load(str(tmp_path))
    assert time.monotonic() - start < 1


def test_rotation_and_drill_dates(tmp_path):
    r1 = age.recipient_from_identity(age.generate_identity())
    r2 = age.recipient_from_identity(age.generate_identity())
    inv = ki.Inventory.load(str(tmp_path))
    assert inv.record("glass", "break-glass", r1, created="2026-01-01")
    assert inv.mark_drilled("glass", "2026-02-01") and not inv.mark_drilled("glass", "2026-02-01")
    assert inv.save()
    inv = ki.Inventory.load(str(tmp_path))
    assert inv.find("glass").drilled == "2026-02-01" and not inv.changed
    assert inv.record("glass", "break-glass", r2, created="2026-03-01", rotated=True)
    e = inv.find("glass")
    assert (e.recipient, e.created, e.rotated, e.drilled) == (r2, "2026-03-01", "2026-03-01", None)


def test_six_parallel_module_runs_lose_no_entry(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tests.lib.runner import run_module

    (tmp_path / ".sops.yaml").write_text("creation_rules: []\n")
    recipients = {f"h{i}": age.recipient_from_identity(age.generate_identity()) for i in range(6)}

    def one(item):
        anchor, r = item
        return run_module("sops_key_inventory",
                          {"repo": str(tmp_path), "anchor": anchor, "kind": "host", "recipient": r, "host": anchor})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, recipients.items()))
    assert all(r.changed and not r.failed for r in results), [r.msg for r in results]
    assert {e.anchor: e.recipient for e in ki.load(str(tmp_path))} == recipients
