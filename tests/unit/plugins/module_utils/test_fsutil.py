"""fsutil: writes that never follow a link someone else planted, modes that ignore the umask, the lock,
private staging that an interrupted run cannot leave behind for good."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import fsutil

NOBODY = 65534


@pytest.fixture
def umask000():
    old = os.umask(0)
    yield
    os.umask(old)


def test_write_through_a_link_another_user_planted_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("theirs\n")
    link = tmp_path / "keys.txt"
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(fsutil.UnsafePathError, match=r"keys.txt is a symlink owned by uid 65534"):
        fsutil.atomic_write(str(link), "AGE-SECRET-KEY-1X\n", mode=0o600, private=True)
    assert victim.read_text() == "theirs\n" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.txt", "victim"]


def test_private_key_never_keeps_another_users_ownership(tmp_path):
    key = tmp_path / "key"
    key.write_text("old\n")
    os.chown(key, NOBODY, NOBODY)
    os.chmod(key, 0o644)
    fsutil.atomic_write(str(key), "new\n", private=True)
    st = os.stat(key)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)


def test_non_private_file_keeps_mode_and_owner(tmp_path):
    f = tmp_path / "shared.yaml"
    f.write_text("a: 1\n")
    os.chown(f, NOBODY, NOBODY)
    os.chmod(f, 0o640)
    fsutil.atomic_write(str(f), "a: 2\n")
    st = os.stat(f)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o640)


def test_private_key_into_a_directory_another_user_can_write_is_refused(tmp_path):
    d = tmp_path / "dest"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(fsutil.UnsafePathError, match="another user could read or replace"):
        fsutil.atomic_write(str(d / "ssh_host_ed25519_key"), "k", mode=0o600, private=True)
    assert list(d.iterdir()) == []
    with pytest.raises(fsutil.UnsafePathError, match="owned by uid 65534"):
        fsutil.ensure_private_dir(str(d))


def test_modes_do_not_depend_on_the_umask(tmp_path, umask000):
    made = fsutil.make_dirs(str(tmp_path / "sops" / "host-keys"), 0o755)
    assert made
    assert stat.S_IMODE(os.stat(tmp_path / "sops").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "sops" / "host-keys").st_mode) == 0o755
    fsutil.atomic_write(str(tmp_path / "sops" / "new.yaml"), "x", default_mode=0o644)
    assert stat.S_IMODE(os.stat(tmp_path / "sops" / "new.yaml").st_mode) == 0o644
    fsutil.ensure_private_dir(str(tmp_path / "priv" / "deeper"))
    assert stat.S_IMODE(os.stat(tmp_path / "priv" / "deeper").st_mode) == 0o700


def test_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    (tmp_path / ".sops.yaml").write_text("creation_rules: []\n")
    target = tmp_path / "precious"
    target.write_text("do not truncate\n")
    (tmp_path / fsutil.LOCK_NAME).symlink_to(target)
    with pytest.raises(fsutil.UnsafePathError, match="is a symlink"):
        with fsutil.repo_lock(str(tmp_path)):
            pass
    assert target.read_text() == "do not truncate\n"


def test_lock_on_a_directory_that_is_not_a_repository_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no .sops.yaml"):
        with fsutil.repo_lock(str(tmp_path), require=".sops.yaml"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_lock_on_a_file_says_it_is_not_a_directory(tmp_path):
    (tmp_path / "repo").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory") as info:
        with fsutil.repo_lock(str(tmp_path / "repo")):
            pass
    assert info.value.filename == str(tmp_path / "repo")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        with fsutil.repo_lock(str(tmp_path / "missing")):
            pass


def test_lock_is_reentrant_in_one_thread_and_waits_for_another_process(tmp_path):
    (tmp_path / ".sops.yaml").write_text("")
    with fsutil.repo_lock(str(tmp_path), purpose="outer"):
        with fsutil.repo_lock(str(tmp_path), purpose="inner"):
            pass
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); "
            "from ansible_collections.nixfleet.sops.plugins.module_utils import fsutil; "
            "cm = fsutil.repo_lock(sys.argv[1], purpose='holder'); cm.__enter__(); print('locked', flush=True); "
            "time.sleep(0.6)")
    coll = os.path.join(os.path.dirname(__file__), *[".."] * 4, ".collections")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), os.path.abspath(coll)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(fsutil.LockedError, match=r"\(holder\).*goes away by itself"):
        with fsutil.repo_lock(str(tmp_path)):
            pass
    start = time.monotonic()
    with fsutil.repo_lock(str(tmp_path), wait=10):  # queues until the holder lets go
        waited = time.monotonic() - start
    assert 0.2 < waited < 9
    holder.wait(5)


def test_full_disk_names_the_file(tmp_path, monkeypatch):
    def enospc(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    f = tmp_path / "shared.yaml"
    f.write_text("old\n")
    monkeypatch.setattr(fsutil.os, "fsync", enospc)
    with pytest.raises(OSError) as err:
        fsutil.atomic_write(str(f), "new\n")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(f)
    assert f.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["shared.yaml"]


def test_walk_skips_links_fifos_and_our_own_files(tmp_path):
    (tmp_path / "sops").mkdir()
    (tmp_path / "sops" / "a.yaml").write_text("x")
    os.mkfifo(tmp_path / "sops" / "pipe.yaml")
    (tmp_path / "sops" / "out.yaml").symlink_to("/etc/passwd")
    (tmp_path / "linkdir").symlink_to("/etc")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text("x")
    (tmp_path / "sops" / ".a.yaml.nixfleet-abcdef12.tmp").write_text("x")
    assert fsutil.walk_files(str(tmp_path)) == ["sops/a.yaml"]


def test_stale_staging_of_a_dead_run_is_removed_a_live_one_kept(tmp_path):
    base = str(tmp_path / "run")
    os.mkdir(base, 0o700)
    live, removed = fsutil.new_staging_dir("extra-files-web", base=base)
    assert removed == [] and stat.S_IMODE(os.stat(live).st_mode) == 0o700
    dead = os.path.join(base, "extra-files-old-123456")
    os.mkdir(dead, 0o700)
    with open(os.path.join(dead, ".nixfleet-run"), "w") as fh:
        fh.write("999999999 1\n")  # no such process
    with open(os.path.join(dead, "ssh_host_ed25519_key"), "w") as fh:
        fh.write("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    second, removed = fsutil.new_staging_dir("extra-files-db", base=base)
    assert removed == [dead] and not os.path.exists(dead)
    assert os.path.isdir(live) and os.path.isdir(second)


def test_runtime_base_prefers_a_private_xdg_runtime_dir(tmp_path):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    base = fsutil.runtime_base({"XDG_RUNTIME_DIR": str(xdg)})
    assert base == str(xdg / f"nixfleet-{os.geteuid()}")
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert not fsutil.runtime_base({"XDG_RUNTIME_DIR": str(loose)}).startswith(str(loose))


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2-exchange", "link-and-rename"])
@pytest.mark.parametrize("action", ["erofs", "eacces", "enospc"])
@pytest.mark.parametrize("nth", [1, 2, 3])
def test_commit_all_is_all_or_nothing(tmp_path, monkeypatch, action, nth, swap):
    from ansible_collections.nixfleet.sops.plugins.module_utils import failpoints

    monkeypatch.setattr(fsutil, "_exchange_works", [swap])
    files = [tmp_path / f"f{i}.yaml" for i in range(3)]
    for i, f in enumerate(files[:2]):
        f.write_text(f"old {i}\n")
    pairs = [(fsutil.stage_write(str(f), f"new {i}\n", sync=False), str(f)) for i, f in enumerate(files)]
    monkeypatch.setenv(failpoints.ENV, f"rename#{nth}:{action}")
    failpoints.reset()
    try:
        with pytest.raises(OSError) as err:
            fsutil.commit_all(pairs)
    finally:
        failpoints.reset()
    assert err.value.filename == str(files[nth - 1])
    assert [f.read_text() if f.exists() else None for f in files] == ["old 0\n", "old 1\n", None]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.yaml", "f1.yaml"]


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2-exchange", "link-and-rename"])
def test_commit_all_renames_everything(tmp_path, monkeypatch, swap):
    monkeypatch.setattr(fsutil, "_exchange_works", [swap])
    links = []
    real_link = os.link
    monkeypatch.setattr(os, "link", lambda a, b: links.append(b) or real_link(a, b))
    files = [tmp_path / f"f{i}.yaml" for i in range(3)]
    files[0].write_text("old\n")
    files[0].chmod(0o640)
    fsutil.commit_all([(fsutil.stage_write(str(f), "new\n", sync=False), str(f)) for f in files])
    assert [f.read_text() for f in files] == ["new\n"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.yaml", "f1.yaml", "f2.yaml"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o640
    # Swapping needs no backup link (this filesystem swaps); the fallback links the one existing file.
    assert len(links) == (0 if swap else 1)


@pytest.mark.parametrize("count", [5, 200], ids=["one-thread", "threads"])
def test_commit_all_of_many_files_leaves_no_old_version(tmp_path, count):
    files = [tmp_path / f"f{i:03d}.yaml" for i in range(count)]
    for f in files:
        f.write_text("old\n")
    fsutil.commit_all([(fsutil.stage_write(str(f), f"new {f.name}\n", sync=False), str(f)) for f in files])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f.name for f in files]
    assert all(f.read_text() == f"new {f.name}\n" for f in files)


@pytest.mark.parametrize("count", [5, 200], ids=["one-thread", "threads"])
def test_discard_staged_tries_every_file_then_raises_the_error(tmp_path, count):
    paths = [tmp_path / f"t{i:03d}" for i in range(count)]
    for p in paths:
        p.write_text("x")
    blocker = tmp_path / "t002"
    blocker.unlink()
    blocker.mkdir()
    gone = tmp_path / "already-gone"
    with pytest.raises(IsADirectoryError) as err:
        fsutil.discard_staged([str(p) for p in paths] + [str(gone)])
    assert err.value.filename == str(blocker)
    assert [p.name for p in tmp_path.iterdir()] == ["t002"]


def test_read_regular_refuses_what_is_not_a_small_regular_file(tmp_path):
    import time

    fifo = tmp_path / "keys.txt"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(fsutil.UnsafePathError, match=r"keys.txt: is a FIFO, not a regular key file"):
        fsutil.read_regular(str(fifo), fsutil.KEY_FILE_LIMIT, "key file")
    assert time.monotonic() - start < 1  # never blocks waiting for a writer
    sparse = tmp_path / "big.txt"
    with open(sparse, "wb") as fh:
        fh.truncate(200 << 20)  # 200 MB that take no disk
    with pytest.raises(fsutil.UnsafePathError, match=r"big.txt: is 209715200 bytes, more than a key file can be"):
        fsutil.read_regular(str(sparse), fsutil.KEY_FILE_LIMIT, "key file")
    with pytest.raises(fsutil.UnsafePathError, match="is a directory"):
        fsutil.read_regular(str(tmp_path), fsutil.KEY_FILE_LIMIT, "key file")
    with pytest.raises(FileNotFoundError):
        fsutil.read_regular(str(tmp_path / "missing"), 10)
    (tmp_path / "ok").write_bytes(b"x" * 10)
    assert fsutil.read_regular(str(tmp_path / "ok"), 10) == b"x" * 10
