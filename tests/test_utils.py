"""sepdtd.utils: atomic writes and what a writer killed midway leaves."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from sepdtd import utils

KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from sepdtd import utils
    def die(*args):  # killed after the temporary file is written, before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = die
    utils.atomic_write_bytes(sys.argv[1], b"half")
""")


def _killed_writer(path) -> int:
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True)
    return proc.returncode


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_later_write_removes_a_killed_writers_old_temporary(tmp_path):
    path = tmp_path / "seed0[x].json"  # glob metacharacters in the name
    assert _killed_writer(path) == -9
    (left,) = list(tmp_path.iterdir())
    assert left.name.startswith(f"seed0[x].json.tmp-{utils._host()}-") and not path.exists()
    utils.atomic_write_json(path, {"a": 1})               # too young to judge: kept
    assert left.exists()
    _age(left, utils.STALE_AFTER_S + 60)
    utils.atomic_write_json(path, {"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0[x].json"]
    assert path.read_text() == '{\n  "a": 2\n}\n'


def test_a_live_writers_other_hosts_and_young_temporaries_are_kept(tmp_path):
    path = tmp_path / "seed0.json"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _killed_writer(tmp_path / "seed1.json") == -9
        (young,) = tmp_path.glob("seed1.json.tmp-*")
        mine = tmp_path / f"seed0.json.tmp-{utils._host()}-{live.pid}-abc"
        foreign = tmp_path / f"seed0.json.tmp-{utils._host()}x-{live.pid + 999999}-abc"   # another host
        old_style = tmp_path / "seed0.json.tmp-k3j2h1"                                   # no host, no pid
        for f in (mine, foreign, old_style):
            f.write_bytes(b"?")
            _age(f, utils.STALE_AFTER_S + 60)
        assert utils.remove_stale_temporaries(tmp_path) == []
        utils.atomic_write_bytes(path, b"done")
        names = {p.name for p in tmp_path.iterdir()}
        assert names == {mine.name, foreign.name, old_style.name, young.name, path.name}
        assert path.read_bytes() == b"done"
    finally:
        live.kill()
        live.wait()
    assert utils.remove_stale_temporaries(tmp_path) == [mine]


def test_any_writer_in_the_folder_removes_what_dead_writers_left(tmp_path):
    assert _killed_writer(tmp_path / "seed1.json") == -9
    (left,) = tmp_path.glob("seed1.json.tmp-*")
    dead_pid = int(left.name.split("-")[-2])
    fetch = tmp_path / f".fetch.tmp-{utils._host()}-{dead_pid}-k3j2h1"  # a folder of a killed download
    (fetch / "part").mkdir(parents=True)
    (fetch / "part" / "x.gz").write_bytes(b"half")
    for f in (left, fetch):
        _age(f, utils.STALE_AFTER_S + 60)
    utils.atomic_write_bytes(tmp_path / "other.json", b"{}")  # another name in the same folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_every_temporary_follows_one_naming_scheme(tmp_path):
    prefix = f"{utils._host()}-{os.getpid()}-"
    with utils.temporary_dir(tmp_path, ".fetch") as folder:
        assert folder.parent == tmp_path and folder.name.startswith(f".fetch.tmp-{prefix}")
        with utils.atomic_writer(folder / "x.npy") as f:
            (tmp,) = folder.glob("x.npy.tmp-*")
            assert tmp.name.startswith(f"x.npy.tmp-{prefix}")
            f.write(b"123")
        assert (folder / "x.npy").read_bytes() == b"123" and not tmp.exists()
        try:
            with utils.atomic_writer(folder / "y.npy") as f:
                f.write(b"half")
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        assert sorted(p.name for p in folder.iterdir()) == ["x.npy"]
    assert not folder.exists()


STOPPED_HOLDER = textwrap.dedent("""
    import os, signal, sys
    from sepdtd import utils
    with utils.file_lock(sys.argv[1]):
        print("locked", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
""")


def test_a_stopped_lock_holder_ends_the_wait_with_its_name(tmp_path, monkeypatch):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", STOPPED_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        monkeypatch.setattr(utils, "LOCK_STOPPED_AFTER_S", 0.5, raising=False)
        start = time.monotonic()
        with pytest.raises(utils.LockTimeout, match=rf"process {holder.pid} of this host, which is stopped") as err:
            with utils.file_lock(lock, timeout=30, what="the data set"):
                pass
        assert time.monotonic() - start < 20
        assert str(lock) in str(err.value) and f"kill -CONT {holder.pid}" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with utils.file_lock(lock, timeout=5):  # a killed holder releases the lock
        assert lock.read_text() == f"{os.getpid()} {utils._host()}\n"


def test_the_packages_commit_is_read_once_per_process(monkeypatch):
    """A long run records the commit of the code it loaded, not one checked out while it ran."""
    heads = iter(["a" * 40, "b" * 40])
    monkeypatch.delenv("SEPDTD_COMMIT", raising=False)
    monkeypatch.setattr(utils, "_OWN_COMMIT", [])
    monkeypatch.setattr(utils, "_ask_git", lambda repo: next(heads))
    assert utils.git_commit() == "a" * 40
    assert utils.git_commit() == "a" * 40                      # HEAD moved to b...: still the loaded code's
    assert utils.git_commit("/elsewhere") == "b" * 40          # another repository is asked each time
    monkeypatch.setenv("SEPDTD_COMMIT", "c" * 12)
    assert utils.git_commit() == "c" * 12
