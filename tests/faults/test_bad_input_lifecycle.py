"""Bad and hostile input to the lifecycle modules (access, key rotation, revoke, break-glass) and to the two
that run on a host (sops_nix_verify, target_file).

The same contract as test_bad_input.py: one parameter gets a bad value, the others stay valid; the run
fails with one clear line naming what was wrong and where, prints no key material, and the repository,
the hostile directory and the home directory are byte-identical afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age

from tests.faults.lib import (
    NOBODY,
    Args,
    Cases,
    World,
    assert_bad_input_changes_nothing,
    flip,
    make_world,
)

CASES = Cases()
case = CASES.case


def _repo_cases(module: str, base: Args | Callable[..., dict[str, Any]]) -> None:
    """The repository parameter pointed at what is not a secrets repository."""
    case(module, "repo_missing", ("missing",))(lambda w: base(w, repo=w.bad["missing"]))
    case(module, "repo_is_a_file", ("garbage",))(lambda w: base(w, repo=w.bad["garbage"]))
    case(module, "repo_without_config", (r"hostile/dir", r"\.sops\.yaml"))(lambda w: base(w, repo=w.bad["dir"]))


def _foreign_dir(w: World, name: str) -> str:
    d = os.path.join(w.base, "hostile", name)
    os.mkdir(d)
    os.chown(d, NOBODY, NOBODY)
    return d


# --------------------------------------------------------------------------- sops_access
def _access(w: World, **kw: Any) -> dict[str, Any]:
    args = {"repo": w.path, "admin_anchors": ["admin"],
            "categories": {"web": {"path_regex": r"sops/web\.yaml$", "groups": ["web"]}},
            "groups": {"all": ["alpha", "beta"], "web": ["alpha"], "ungrouped": []}}
    return {**args, **kw}


_repo_cases("sops_access", _access)
case("sops_access", "path_regex", ("web", "path_regex"))(
    lambda w: _access(w, categories={"web": {"path_regex": "(", "groups": ["web"]}}))
case("sops_access", "unknown_group", ("web", "nope"))(
    lambda w: _access(w, categories={"web": {"path_regex": r"sops/web\.yaml$", "groups": ["nope"]}}))
case("sops_access", "category_name", ("category name", "not allowed"))(
    lambda w: _access(w, categories={"../x": {"path_regex": r"sops/web\.yaml$", "groups": ["web"]}}))
case("sops_access", "category_not_a_mapping", ("web",))(lambda w: _access(w, categories={"web": "sops/web.yaml"}))
case("sops_access", "path_out_of_repo", ("web", r"\.\./"))(
    lambda w: _access(w, categories={"web": {"path": "../../etc/shadow", "groups": ["web"]}}))
case("sops_access", "host_name", ("web", "group web", "host name", "not allowed"))(
    lambda w: _access(w, groups={"all": ["alpha", "../x"], "web": ["../x"]}))
case("sops_access", "unknown_admin", ("ghost", "anchor"))(lambda w: _access(w, admin_anchors=["ghost"]))
case("sops_access", "break_glass_anchor", ("nixfleet_break_glass_anchor", "&a", "not allowed"))(
    lambda w: _access(w, break_glass_anchor="&a"))
case("sops_access", "host_categories_unknown", ("alpha", "nope"))(
    lambda w: _access(w, host_categories={"alpha": {"add": ["nope"]}}))
case("sops_access", "host_categories_shape", ("alpha", "nixfleet_categories"))(
    lambda w: _access(w, host_categories={"alpha": ["web"]}))
case("sops_access", "host_user", ("web", "alpha", "primary user", "not a valid user"))(
    lambda w: _access(w, user_keys=True, host_users={"alpha": "../root"}))
case("sops_access", "shadows_hand_written_rule", ("shared", "hand-written"))(
    lambda w: _access(w, categories={"shared": {"path_regex": r"sops/shared\.yaml$", "groups": ["web"]}}))


# --------------------------------------------------------------------------- sops_rotate_keys
def _rotate(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": w.path, "host": "alpha", "phase": "1", "kinds": ["host"], **kw}


_repo_cases("sops_rotate_keys", _rotate)
for _bad_host in ["../x", "a b", "Alpha", "&a", ""]:
    case("sops_rotate_keys", f"host {_bad_host!r}", ("host name", "not allowed"))(
        lambda w, h=_bad_host: _rotate(w, host=h))
case("sops_rotate_keys", "unknown_host", ("ghost", "no host key", "bootstrap"))(lambda w: _rotate(w, host="ghost"))
case("sops_rotate_keys", "kinds", ("alpha", "everything", "cannot be rotated"))(
    lambda w: _rotate(w, kinds=["everything"]))
case("sops_rotate_keys", "user", ("alpha", "primary user", "not a valid user"))(
    lambda w: _rotate(w, kinds=["user"], user="../root"))
case("sops_rotate_keys", "deploy_repo", (r"\.\./x", "deploy key repository"))(
    lambda w: _rotate(w, kinds=["deploy"], deploy_repos=["../x"]))
case("sops_rotate_keys", "max_age_negative", ("max_age_days.host", "number of days"))(
    lambda w: _rotate(w, kinds=["due"], max_age_days={"host": -1}))
case("sops_rotate_keys", "max_age_kind", ("max_age_days", "laptop", "unknown key kind"))(
    lambda w: _rotate(w, kinds=["due"], max_age_days={"laptop": 30}))
case("sops_rotate_keys", "phase_2_without_phase_1", ("alpha", "no key rotation in progress"))(
    lambda w: _rotate(w, phase="2"))
case("sops_rotate_keys", "verify_without_phase_1", ("alpha", "no key rotation in progress"))(
    lambda w: _rotate(w, phase="verify"))


# --------------------------------------------------------------------------- sops_revoke
def _revoke(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": w.path, "host": "beta", "identity_files": [w.admin_keys], **kw}


_repo_cases("sops_revoke", _revoke)
for _bad_host in ["../x", "a b", "&a", "*", ""]:
    case("sops_revoke", f"host {_bad_host!r}", ("host name", "not allowed"))(
        lambda w, h=_bad_host: _revoke(w, host=h))
case("sops_revoke", "user", ("beta", "primary user", "not a valid user"))(lambda w: _revoke(w, user="../root"))
case("sops_revoke", "archive_dir_out", ("archive_dir", r"\.\./"))(
    lambda w: _revoke(w, own_files="archive", archive_dir="../../outside"))
case("sops_revoke", "archive_dir_absolute", ("archive_dir",))(
    lambda w: _revoke(w, own_files="archive", archive_dir="/etc"))
case("sops_revoke", "report_dir_fifo", ("fifo", "not a plain directory", "revocation report"))(
    lambda w: _revoke(w, report_dir=w.bad["fifo"]))
case("sops_revoke", "report_dir_of_another_user", ("theirs", "uid 65534", "revocation report"))(
    lambda w: _revoke(w, report_dir=_foreign_dir(w, "theirs")))


# --------------------------------------------------------------------------- sops_break_glass
def _bg(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": w.path, **kw}


case("sops_break_glass", "generate_output_dir_of_another_user", ("theirs", "uid 65534"))(
    lambda w: {"action": "generate", "fleet": "demo", "output_dir": _foreign_dir(w, "theirs")})
case("sops_break_glass", "generate_output_dir_fifo", ("fifo", "directory"))(
    lambda w: {"action": "generate", "fleet": "demo", "output_dir": w.bad["fifo"]})
case("sops_break_glass", "generate_fleet_name", ("fleet",))(
    lambda w: {"action": "generate", "fleet": "../x", "output_dir": os.path.join(w.base, "home", "bg")})
case("sops_break_glass", "generate_shares_one", ("shares",))(
    lambda w: {"action": "generate", "fleet": "demo", "output_dir": os.path.join(w.base, "home", "bg"),
               "shares": 1, "threshold": 1})
case("sops_break_glass", "generate_threshold_above_shares", ("threshold", "shares"))(
    lambda w: {"action": "generate", "fleet": "demo", "output_dir": os.path.join(w.base, "home", "bg"),
               "shares": 3, "threshold": 4})
case("sops_break_glass", "register_recipient_checksum", ("recipient", "checksum"))(
    lambda w: _bg(w, action="register", recipient=flip(w.repo.recipient("admin"))))
case("sops_break_glass", "register_identity_pasted", ("recipient", "age1"))(
    lambda w: _bg(w, action="register", recipient=w.repo.identities["beta"]))
case("sops_break_glass", "register_anchor", ("not allowed",))(
    lambda w: _bg(w, action="register", recipient=w.repo.recipient("admin"), anchor="../x"))
case("sops_break_glass", "test_key_garbage", ("break_glass_key", "lines"))(
    lambda w: _bg(w, action="test", break_glass_key="not a key at all"))
case("sops_break_glass", "test_shares_garbage", ("break_glass_shares",))(
    lambda w: _bg(w, action="test", break_glass_shares=["one two three", "four five six"]))
case("sops_break_glass", "recover_key_file_in_foreign_dir", ("theirs", "uid 65534"))(
    lambda w: _bg(w, action="recover", break_glass_key=age.generate_identity(), admin_anchor="admin2",
                  admin_key_file=os.path.join(_foreign_dir(w, "theirs"), "keys.txt")))
_repo_cases("sops_break_glass", lambda w, **kw: _bg(w, action="register", recipient=w.repo.recipient("admin"), **kw))


# --------------------------------------------------------------------------- on the host: sops_nix_verify
def _verify(w: World, **kw: Any) -> dict[str, Any]:
    """The hostile directory as the host's root; one fault expected, reported in the one-line summary."""
    return {"host": "alpha", "root": os.path.join(w.base, "hostile"), "fail_on_faults": True, **kw}


for _name, _path, _needles in [
    ("manifest_fifo", "/fifo", ("alpha", "manifest /fifo", "FIFO")),
    ("manifest_dir", "/dir", ("manifest /dir", "directory")),
    ("manifest_sparse", "/sparse", ("manifest /sparse", "bytes")),
    ("manifest_garbage", "/garbage", ("manifest /garbage", "cannot read")),
    ("manifest_alias_bomb", "/bomb.yaml", ("manifest /bomb.yaml", "cannot read")),
    ("manifest_link_out", "/link_out", ("manifest /link_out", "does not exist")),
]:
    case("sops_nix_verify", _name, _needles)(lambda w, m=_path: _verify(w, manifest=[m]))
case("sops_nix_verify", "sops_file_fifo", ("sops_file", "fifo", "FIFO"))(
    lambda w: _verify(w, scope="controller", sops_files=[w.bad["fifo"]], recipients=[w.repo.recipient("alpha")]))
case("sops_nix_verify", "sops_file_out_of_the_repo", ("sops_file", "shadow", "secrets repo"))(
    lambda w: _verify(w, scope="controller", secrets_repo=w.path, recipients=[w.repo.recipient("alpha")],
                      sops_files=["/nix/store/abc-source/../../../etc/shadow"]))


# --------------------------------------------------------------------------- on the host: target_file
def _target(w: World, **kw: Any) -> dict[str, Any]:
    args = {"root": os.path.join(w.base, "hostile"), "path": "/new/x", "mode": "0600", "content": "hello", **kw}
    return {k: v for k, v in args.items() if not (k == "content" and args.get("state") == "directory")}


def _planted_link(w: World) -> str:
    link = os.path.join(w.base, "hostile", "etc_link")
    os.symlink("/etc", link)
    os.lchown(link, NOBODY, NOBODY)
    return "/etc_link/x"


case("target_file", "relative_path", ("etc/x", "absolute path"))(lambda w: _target(w, path="etc/x"))
case("target_file", "dotdot", (r"\.\.", "plain path below the root"))(lambda w: _target(w, path="/a/../../x"))
case("target_file", "root_missing", ("missing", "does not exist"))(lambda w: _target(w, root=w.bad["missing"]))
case("target_file", "mode_not_octal", ("rwx", "octal"))(lambda w: _target(w, mode="rwx"))
case("target_file", "mode_out_of_range", ("07777777", "out of range"))(lambda w: _target(w, mode="07777777"))
case("target_file", "owner_unknown", ("no-such-user-x", "does not exist"))(
    lambda w: _target(w, owner="no-such-user-x"))
case("target_file", "group_unknown", ("no-such-group-x", "does not exist"))(
    lambda w: _target(w, group="no-such-group-x"))
case("target_file", "through_a_planted_link", ("etc_link", "symbolic link", "refusing"))(
    lambda w: _target(w, path=_planted_link(w)))
case("target_file", "into_a_directory_of_another_user", ("theirs", "uid 65534", "refusing"))(
    lambda w: _target(w, path=os.path.join("/", os.path.basename(_foreign_dir(w, "theirs")), "x")))
case("target_file", "onto_a_fifo", ("/fifo", "not a regular file"))(lambda w: _target(w, path="/fifo"))
case("target_file", "file_onto_a_directory", ("/dir", "not a regular file"))(lambda w: _target(w, path="/dir"))
case("target_file", "directory_onto_a_file", ("/garbage", "not a directory"))(
    lambda w: _target(w, path="/garbage", state="directory", mode="0700"))
case("target_file", "content_too_big", ("content", "1048576 bytes"))(lambda w: _target(w, content="x" * (2 << 20)))


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


@pytest.mark.parametrize("module,args,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(world, module, args, needles):
    assert_bad_input_changes_nothing(world, module, args, needles)
