"""sepdtd.utils: atomic writes and what a writer killed midway leaves."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

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


def test_a_live_writers_other_hosts_and_other_files_temporaries_are_kept(tmp_path):
    path = tmp_path / "seed0.json"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _killed_writer(tmp_path / "seed1.json") == -9
        mine = tmp_path / f"seed0.json.tmp-{utils._host()}-{live.pid}-abc"
        foreign = tmp_path / f"seed0.json.tmp-{utils._host()}x-{live.pid + 999999}-abc"   # another host
        old_style = tmp_path / "seed0.json.tmp-k3j2h1"                                   # no host, no pid
        for f in (mine, foreign, old_style, *tmp_path.glob("seed1.json.tmp-*")):
            f.write_bytes(b"?")
            _age(f, utils.STALE_AFTER_S + 60)
        assert utils.remove_stale_temporaries(path) == []
        utils.atomic_write_bytes(path, b"done")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert {mine.name, foreign.name, old_style.name} <= set(names)
        assert sum(n.startswith("seed1.json.tmp-") for n in names) == 1
        assert path.read_bytes() == b"done"
    finally:
        live.kill()
        live.wait()
    assert utils.remove_stale_temporaries(path) == [mine]
