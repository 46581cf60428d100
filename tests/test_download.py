"""Downloads against a real HTTP server on loopback: checksums are verified, a wrong file is refused."""

import functools
import hashlib
import http.server
import shutil
import threading

import pytest

from funclens import data
from funclens.data import DataError, Remote, load_dataset


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_verifies_md5_then_loads(server, tmp_path, shared_data, monkeypatch):
    root, url = server
    remotes = []
    for f in sorted((shared_data / "mnist").glob("*.gz")):
        shutil.copy(f, root / f.name)
        remotes.append(Remote(f.name, url + f.name, hashlib.md5(f.read_bytes()).hexdigest()))
    monkeypatch.setitem(data.REMOTES, "mnist", remotes)
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "none")
    ds = load_dataset("mnist", tmp_path / "cache")
    assert ds.train_x.shape == (60000, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(r.filename for r in remotes)


def test_a_download_with_the_wrong_checksum_is_refused(server, tmp_path, monkeypatch):
    root, url = server
    (root / "t.gz").write_bytes(b"not what was published")
    monkeypatch.setitem(data.REMOTES, "mnist", [Remote("t.gz", url + "t.gz", "0" * 32)])
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "none")
    with pytest.raises(DataError, match="differs from the published"):
        load_dataset("mnist", tmp_path / "cache")
    assert not (tmp_path / "cache" / "mnist" / "t.gz").exists()


def test_no_network_names_the_files_expected(tmp_path, monkeypatch):
    monkeypatch.setitem(data.REMOTES, "cifar10", [Remote("c.tar.gz", "http://127.0.0.1:9/c.tar.gz", "0" * 32)])
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "none")
    with pytest.raises(DataError, match="download of .* failed.*data_batch_1"):
        load_dataset("cifar10", tmp_path)


def test_cifar_archive_is_downloaded_checked_and_unpacked(server, tmp_path, monkeypatch):
    import tarfile

    from test_data import write_cifar100

    root, url = server
    write_cifar100(tmp_path / "src" / "cifar-100-python")
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-100-python", arcname="cifar-100-python")
    md5 = hashlib.md5((root / "cifar-100-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(data.REMOTES, "cifar100", [Remote("cifar-100-python.tar.gz", url + "cifar-100-python.tar.gz", md5)])
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "none")
    ds = load_dataset("cifar100", tmp_path / "cache", allow_modified=True)  # a small stand-in, not the published files
    assert ds.num_classes == 100 and ds.train_x.shape == (50, 3, 32, 32)
