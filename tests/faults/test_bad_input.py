"""Bad and hostile input to every module: one clear line naming what and where, non-zero, nothing changed.

Each case gives one parameter a bad value (a FIFO, a directory, a 200 MB sparse file, binary garbage,
an alias bomb, a link out of the tree, a file another user owns, a malformed name or key) and keeps
the others valid, so the error must be about that parameter. The modules run in this process (the
CLI is not the point here; tests/integration runs them through Ansible).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age

from tests.faults import test_bad_input_lifecycle as lifecycle
from tests.faults.lib import (
    NOBODY,
    Cases,
    World,
    assert_bad_input_changes_nothing,
    flip,
    make_world,
)

CASES = Cases()
case = CASES.case


def ids(w: World) -> dict[str, Any]:
    return {"identity_files": [w.admin_keys]}


def cfg(w: World) -> str:
    return w.repo.file(".sops.yaml")


def bombrepo(w: World) -> str:
    path = os.path.join(w.base, "hostile", "bombrepo")
    os.makedirs(path, exist_ok=True)
    shutil.copy(w.bad["bomb"], os.path.join(path, ".sops.yaml"))
    return path


# --------------------------------------------------------------------------- identity options (every opener)
IDENTITY_BAD = [
    ("identity_fifo", lambda w: {"identity_files": [w.bad["fifo"]]}, ("fifo", "FIFO")),
    ("identity_dir", lambda w: {"identity_files": [w.bad["dir"]]}, ("dir", "directory")),
    ("identity_sparse", lambda w: {"identity_files": [w.bad["sparse"]]}, ("sparse", "bytes")),
    ("identity_garbage", lambda w: {"identity_files": [w.bad["garbage"]]}, ("garbage",)),
    ("identity_empty", lambda w: {"identity_files": [w.bad["empty"]]}, ("empty", "no age identity")),
    ("identity_missing", lambda w: {"identity_files": [w.bad["missing"]]}, ("missing",)),
    ("identity_pubkey", lambda w: {"identity_files": [w.bad["pubkey"]]}, (r"id\.pub",)),
    ("identity_recipient", lambda w: {"identity_files": [w.bad["recipient_file"]]}, (r"recipient\.txt",)),
    ("identity_wrong", lambda w: {"identity_files": [w.bad["foreign"]]}, ("no identity can open",)),
    ("age_key_garbage", lambda w: {"age_keys": ["not-a-key"]}, (r"age_keys\[0\]",)),
    ("age_key_recipient", lambda w: {"age_keys": [w.repo.recipient("admin")]}, (r"age_keys\[0\]",)),
]


def _identity_cases(module: str, base: Callable[[World], dict[str, Any]], needs_open: bool = True) -> None:
    for name, bad, needles in IDENTITY_BAD:
        if name == "identity_wrong" and not needs_open:
            continue
        case(module, name, needles)(lambda w, base=base, bad=bad: {**base(w), **bad(w)})


# --------------------------------------------------------------------------- sops_secret
def _secret(w: World, **kw: Any) -> dict[str, Any]:
    return {"path": w.repo.file("sops/alpha.yaml"), "key": "db/password", "value": "s3cret", **ids(w), **kw}


for _name, _bad, _needles in [
    ("path_fifo", "fifo", ("fifo", "FIFO")), ("path_dir", "dir", ("dir", "directory")),
    ("path_sparse", "sparse", ("sparse", "bytes")), ("path_garbage", "garbage", ("garbage", "not")),
    ("path_bomb", "bomb", (r"bomb\.yaml", "alias|not a sops")), ("path_link_out", "link_out", ("link_out",)),
    ("path_empty", "empty", ("empty",)),
]:
    case("sops_secret", _name, _needles)(lambda w, b=_bad: _secret(w, path=w.bad[b]))
case("sops_secret", "key_empty", ("key path", "empty"))(lambda w: _secret(w, key=""))
case("sops_secret", "key_sops", ("sops", "metadata"))(lambda w: _secret(w, key="sops/mac"))
case("sops_secret", "key_syntax", (r"\[bad", "sops syntax"))(lambda w: _secret(w, key='["a"][bad'))
case("sops_secret", "key_index_first", ("list index",))(lambda w: _secret(w, key=[0, "a"]))
case("sops_secret", "key_type", ("key path", "dict"))(lambda w: _secret(w, key={"a": 1}))


def _from_file(w: World, bad: str) -> dict[str, Any]:
    args = {k: v for k, v in _secret(w).items() if k != "value"}
    return {**args, "value_file": w.bad[bad]}


case("sops_secret", "value_file_fifo", ("fifo", "FIFO"))(lambda w: _from_file(w, "fifo"))
case("sops_secret", "value_file_missing", ("missing", "value_file"))(lambda w: _from_file(w, "missing"))
case("sops_secret", "value_file_binary", ("garbage", "UTF-8"))(lambda w: _from_file(w, "garbage"))
case("sops_secret", "value_file_sparse", ("sparse", "bytes"))(lambda w: _from_file(w, "sparse"))
case("sops_secret", "new_file_config_bomb", (r"bomb\.yaml", "alias"))(
    lambda w: _secret(w, path=w.repo.file("sops/new.yaml"), config=w.bad["bomb"]))
case("sops_secret", "new_file_config_fifo", ("fifo", "FIFO"))(
    lambda w: _secret(w, path=w.repo.file("sops/new.yaml"), config=w.bad["fifo"]))
case("sops_secret", "new_file_no_rule", ("no creation rule matches", r"other/x\.yaml"))(
    lambda w: _secret(w, path=w.repo.file("other/x.yaml")) if os.makedirs(w.repo.file("other"), exist_ok=True)
    is None else {})
case("sops_secret", "create_false", ("new.yaml", "create"))(
    lambda w: _secret(w, path=w.repo.file("sops/new.yaml"), create=False))
_identity_cases("sops_secret", _secret)


# --------------------------------------------------------------------------- sops_recipient
def _recipient(w: World, **kw: Any) -> dict[str, Any]:
    return {"path": cfg(w), "name": "laptop", "recipient": age.recipient_from_identity(age.generate_identity()),
            "group": "users", **kw}


for _name, _bad, _needles in [("config_fifo", "fifo", ("fifo", "FIFO")), ("config_dir", "dir", ("dir",)),
                              ("config_sparse", "sparse", ("sparse", "bytes")),
                              ("config_garbage", "garbage", ("garbage", "UTF-8")),
                              ("config_bomb", "bomb", (r"bomb\.yaml", "alias")),
                              ("config_missing", "missing", ("missing", "no such file"))]:
    case("sops_recipient", _name, _needles)(lambda w, b=_bad: _recipient(w, path=w.bad[b]))
for _bad_name in ["../x", "a b", "&x", "x:y", "-lead"]:
    case("sops_recipient", f"name {_bad_name}", ("not allowed", "anchor"))(
        lambda w, n=_bad_name: _recipient(w, name=n))
case("sops_recipient", "recipient_checksum", ("checksum",))(
    lambda w: _recipient(w, recipient=flip(w.repo.recipient("admin"))))
case("sops_recipient", "recipient_upper", ("lower case",))(
    lambda w: _recipient(w, recipient=w.repo.recipient("admin").upper()))
case("sops_recipient", "recipient_dsa", ("DSA|ed25519",))(
    lambda w: _recipient(w, recipient="ssh-dss AAAAB3NzaC1kc3MAAACBAP8"))
case("sops_recipient", "recipient_is_an_identity", ("laptop", "age1"))(
    lambda w: _recipient(w, recipient=w.repo.identities["beta"]))
case("sops_recipient", "recipient_text", ("laptop", "age1"))(lambda w: _recipient(w, recipient="hello"))
case("sops_recipient", "group_name", ("group", "not allowed"))(lambda w: _recipient(w, group="a b"))
case("sops_recipient", "unknown_rule", ("no creation rule", r"nope"))(lambda w: _recipient(w, rules=["nope"]))


# --------------------------------------------------------------------------- sops_creation_rule
def _rule(w: World, **kw: Any) -> dict[str, Any]:
    return {"path": cfg(w), "path_regex": r"sops/new\.yaml$", "anchors": ["admin"], **kw}


for _name, _bad, _needles in [("config_fifo", "fifo", ("fifo",)), ("config_bomb", "bomb", ("bomb", "alias")),
                              ("config_garbage", "garbage", ("garbage",)), ("config_dir", "dir", ("dir",))]:
    case("sops_creation_rule", _name, _needles)(lambda w, b=_bad: _rule(w, path=w.bad[b]))
for _regex in ["(", "(?=x)", r"a\Cb", "x{1001}"]:
    case("sops_creation_rule", f"path_regex {_regex}", ("path_regex", "RE2"))(
        lambda w, r=_regex: _rule(w, path_regex=r))
case("sops_creation_rule", "unknown_anchor", ("ghost", "not defined"))(lambda w: _rule(w, anchors=["ghost"]))
case("sops_creation_rule", "bad_anchor_name", ("not allowed",))(lambda w: _rule(w, anchors=["../x"]))
case("sops_creation_rule", "no_members", ("at least one anchor",))(lambda w: _rule(w, anchors=[]))
case("sops_creation_rule", "shamir_too_high", ("shamir_threshold", "2"))(
    lambda w: {"path": cfg(w), "path_regex": r"sops/new\.yaml$", "key_groups": [["admin"], ["alpha"]],
               "shamir_threshold": 3})


# --------------------------------------------------------------------------- fleet modules
def _fleet(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": w.path, **ids(w), **kw}


def _audit(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": w.path, **kw}


for _module, _base in (("sops_rekey", _fleet), ("sops_rotate", _fleet), ("sops_audit", _audit)):
    case(_module, "repo_missing", ("missing",))(lambda w, b=_base: b(w, repo=w.bad["missing"]))
    case(_module, "repo_is_a_file", ("garbage",))(lambda w, b=_base: b(w, repo=w.bad["garbage"]))
    case(_module, "repo_without_config", (r"hostile/dir", r"\.sops\.yaml"))(
        lambda w, b=_base: b(w, repo=w.bad["dir"]))
    case(_module, "repo_config_bomb", ("bombrepo", "alias"))(lambda w, b=_base: b(w, repo=bombrepo(w)))
case("sops_rekey", "include_regex", ("include", "not a valid regular expression"))(
    lambda w: _fleet(w, include=["("]))
for _module in ("sops_rekey", "sops_rotate"):
    case(_module, "files_unknown", ("files: sops/nope.yaml is not a file under", "relative to the repository"))(
        lambda w: _fleet(w, files=["sops/nope.yaml"]))
case("sops_rotate", "path_regex", ("path_regex", "not a valid regular expression"))(
    lambda w: _fleet(w, path_regex="("))
case("sops_rotate", "recipient", ("recipient", "checksum"))(
    lambda w: _fleet(w, recipient=flip(w.repo.recipient("admin"))))
case("sops_rotate", "anchor", ("ghost", "no anchor"))(lambda w: _fleet(w, anchor="ghost"))
_identity_cases("sops_rotate", _fleet)
_identity_cases("sops_rekey", _fleet, needs_open=False)
case("sops_audit", "report_fifo", ("fifo", "FIFO"))(lambda w: _audit(w, report_path=w.bad["fifo"]))
case("sops_audit", "report_json_fifo", ("fifo", "FIFO"))(lambda w: _audit(w, report_json=w.bad["fifo"]))
case("sops_audit", "reports_one_path", ("report_json and report_path", "two paths"))(
    lambda w: _audit(w, report_json=os.path.join(w.base, "r"), report_path=os.path.join(w.base, ".", "r")))
case("sops_audit", "host_groups_not_names", ("host_groups.alpha", "list of group names"))(
    lambda w: _audit(w, host_groups={"alpha": [{"web": 1}]}))


def _foreign_link(w: World) -> str:
    link = os.path.join(w.base, "hostile", "report.html")
    os.symlink("/etc/motd-nixfleet-test", link)
    os.lchown(link, NOBODY, NOBODY)
    return link


case("sops_audit", "report_planted_link", ("report.html", "symlink owned by uid 65534"))(
    lambda w: _audit(w, report_path=_foreign_link(w)))


# --------------------------------------------------------------------------- bootstrap modules
def _host(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": w.path, "host": "griefling", "user": "rain", "admins": ["admin"], **ids(w), **kw}


for _bad_host in ["../x", "a b", "*", "Griefling", "x/y", "-lead", "&a", "a:b", ""]:
    case("sops_host_keys", f"host {_bad_host!r}", ("host name", "not allowed"))(
        lambda w, h=_bad_host: _host(w, host=h))
for _bad_user in ["Root", "../x", "a b", ""]:
    case("sops_host_keys", f"user {_bad_user!r}", ("user",))(lambda w, u=_bad_user: _host(w, user=u))
case("sops_host_keys", "unknown_admin", ("ghost", "admin anchor"))(lambda w: _host(w, admins=["ghost"]))
case("sops_host_keys", "deploy_repo", (r"\.\./x", "deploy key repository"))(
    lambda w: _host(w, deploy_repos=["../x"]))
case("sops_host_keys", "regenerate", ("regenerate", "everything"))(lambda w: _host(w, regenerate=["everything"]))
case("sops_host_keys", "repo_missing", ("missing",))(lambda w: _host(w, repo=w.bad["missing"]))
case("sops_host_keys", "repo_bomb", ("bombrepo", "alias"))(lambda w: _host(w, repo=bombrepo(w)))
_identity_cases("sops_host_keys", _host, needs_open=False)


def _extra(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": w.path, "host": "alpha", "user": "rain", "dest": os.path.join(w.base, "hostile", "stage"),
            **ids(w), **kw}


def _foreign_dir(w: World) -> str:
    d = os.path.join(w.base, "hostile", "theirs")
    os.mkdir(d)
    os.chown(d, NOBODY, NOBODY)
    return d


case("sops_extra_files", "dest_owned_by_another_user", ("theirs", "uid 65534"))(
    lambda w: _extra(w, dest=_foreign_dir(w)))
case("sops_extra_files", "dest_is_a_fifo", ("fifo", "not a plain directory"))(lambda w: _extra(w, dest=w.bad["fifo"]))
case("sops_extra_files", "persist_prefix", ("persist prefix",))(lambda w: _extra(w, persist_prefix="../../etc"))
case("sops_extra_files", "user_home", ("user home",))(lambda w: _extra(w, user_home="/home/../../etc"))
case("sops_extra_files", "host", ("host name", "not allowed"))(lambda w: _extra(w, host="../x"))
case("sops_extra_files", "no_host_key", ("griefling", "no host key", "host_keys"))(
    lambda w: _extra(w, host="griefling"))
case("sops_extra_files", "auto_without_nix_config", ("persist_prefix=auto", "nix_config"))(
    lambda w: _extra(w, persist_prefix="auto"))


def _inventory(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": w.path, "anchor": "alpha", "kind": "host", "recipient": w.repo.recipient("alpha"), **kw}


case("sops_key_inventory", "anchor", ("not allowed",))(lambda w: _inventory(w, anchor="../x"))
case("sops_key_inventory", "recipient", ("checksum",))(
    lambda w: _inventory(w, recipient=flip(w.repo.recipient("alpha"))))
case("sops_key_inventory", "deploy_private_key_pasted", ("private key|public key",))(
    lambda w: _inventory(w, kind="deploy", anchor="alpha-repo",
                         recipient=open(w.repo.keyfile("admin")).read()))
case("sops_key_inventory", "repo_missing", ("missing",))(lambda w: _inventory(w, repo=w.bad["missing"]))


# --------------------------------------------------------------------------- key files, vcs, target files
for _module in ("age_keypair", "ssh_keypair"):
    for _name, _bad, _needles in [("path_fifo", "fifo", ("fifo", "FIFO")), ("path_dir", "dir", ("dir",)),
                                  ("path_sparse", "sparse", ("sparse", "bytes")),
                                  ("path_garbage", "garbage", ("garbage",))]:
        case(_module, _name, _needles)(lambda w, b=_bad: {"path": w.bad[b]})
case("age_keypair", "ssh_key_path_pubkey", (r"id\.pub", "public key"))(
    lambda w: {"path": os.path.join(w.base, "home", "k.txt"), "ssh_key_path": w.bad["pubkey"]})
case("age_keypair", "ssh_key_path_fifo", ("fifo", "FIFO"))(
    lambda w: {"path": os.path.join(w.base, "home", "k.txt"), "ssh_key_path": w.bad["fifo"]})
case("ssh_keypair", "comment_newline", ("comment", "single line"))(
    lambda w: {"path": os.path.join(w.base, "home", "id"), "comment": "a\nb"})
case("vcs_commit", "outside", (r"\.\./", "outside the repository"))(
    lambda w: {"repo": w.path, "paths": ["../x"], "commit_message": "m"})
case("vcs_commit", "not_a_repo", ("hostile", "neither a git nor a jj"))(
    lambda w: {"repo": os.path.join(w.base, "hostile"), "paths": ["x"], "commit_message": "m"})
case("vcs_commit", "empty_message", ("commit message",))(lambda w: {"repo": w.path, "paths": [], "commit_message": " "})


# --------------------------------------------------------------------------- sops_init (a new repository)
def _init(w: World, **kw: Any) -> dict[str, Any]:
    return {"repo": os.path.join(w.base, "hostile", "new-repo"),
            "admin_key_file": os.path.join(w.base, "home", "k.txt"), **kw}


case("sops_init", "repo_is_a_file", ("garbage", "not a directory"))(lambda w: _init(w, repo=w.bad["garbage"]))
case("sops_init", "repo_link_out", ("link_out", "not a directory"))(lambda w: _init(w, repo=w.bad["link_out"]))
case("sops_init", "existing_repository", ("nix-secrets", "sops/alpha.yaml", "nixfleet_init_force"))(
    lambda w: _init(w, repo=w.path))
case("sops_init", "key_fifo", ("fifo",))(lambda w: _init(w, admin_key_file=w.bad["fifo"]))
case("sops_init", "key_garbage", ("garbage",))(lambda w: _init(w, admin_key_file=w.bad["garbage"]))
case("sops_init", "key_in_foreign_dir", ("hostile/theirs",))(
    lambda w: _init(w, admin_key_file=os.path.join(_foreign_dir(w), "keys.txt")))
case("sops_init", "recipient", ("admin_recipient",))(
    lambda w: {**_init(w), "admin_key_file": None, "admin_recipient": "age1nope"})
case("sops_init", "anchor", ("admin anchor",))(lambda w: _init(w, admin_anchor="a b"))


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


@pytest.mark.parametrize("module,args,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(world, module, args, needles):
    assert_bad_input_changes_nothing(world, module, args, needles)


def test_the_suite_covers_every_module():
    """A module added without bad-input cases fails here (issue 12: every module)."""
    modules = {f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "modules"))
               if f.endswith(".py")}
    covered = {c[1] for c in CASES + lifecycle.CASES}
    assert modules <= covered, f"no bad-input cases for {sorted(modules - covered)}"
