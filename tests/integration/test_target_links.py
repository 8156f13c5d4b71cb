"""The bootstrap roles on a push target never follow a link the user planted (attacker review, case 3).

The demo inventory pushes into a directory standing in for the host's root. The user's ~/.config (under
/persist in the demo) is made a link to a root-owned directory with its own mode; ansible.builtin.file
followed it and gave that directory the mode (and, on a real host, the owner) of the user's key directory.
"""

from __future__ import annotations

import os
import stat

from tests.lib.runner import REPO, run_playbook


def test_a_user_link_in_the_path_fails_bootstrap_and_leaves_its_target_alone(tmp_path) -> None:
    inv = tmp_path / "inventory"
    inv.mkdir()
    text = open(os.path.join(REPO, "inventory", "demo.yml")).read()
    demo = tmp_path / "demo"
    text = text.replace('nixfleet_demo_dir: "{{ inventory_dir }}/../demo"', f'nixfleet_demo_dir: "{demo}"')
    (inv / "demo.yml").write_text(text)
    etc = tmp_path / "etc"  # stands for /etc: root's, 0755, holding something
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.chmod(etc, 0o755)
    home = demo / "hosts" / "griefling" / "persist" / "home" / "rain"
    home.mkdir(parents=True)
    os.symlink(etc, home / ".config")
    before = os.stat(etc)

    run = run_playbook("demo.yml", inventory=str(inv / "demo.yml"), env={"TMPDIR": str(tmp_path)})

    assert run.rc != 0
    assert "/persist/home/rain/.config is a symbolic link (to " in run.stdout + run.stderr
    after = os.stat(etc)
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (
        before.st_uid, before.st_gid, stat.S_IMODE(before.st_mode))
    assert sorted(os.listdir(etc)) == ["passwd"] and os.path.islink(home / ".config")
