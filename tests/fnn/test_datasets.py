"""MNIST and Fashion-MNIST loaders, offline: the real download, verification, cache and IDX
parsing code (fnn/_datasets.py) against small IDX files that the tests write and serve from a
local HTTP server on 127.0.0.1; the mirror list and the hash table are monkeypatched to it."""

import collections
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fnn import _datasets, cli, data

TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def idx(array: np.ndarray, magic: int | None = None) -> bytes:
    """A gzipped IDX file of unsigned bytes (magic 0x08nn, nn the number of dimensions)."""
    magic = 0x0800 | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + np.asarray(array, np.uint8).tobytes(), mtime=0)


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class Server:
    """A threading HTTP server on 127.0.0.1: serves ``files`` (URL path -> bytes), 404 for any
    other path, counts ``hits`` per path; paths in ``drop`` announce their full Content-Length
    and then close the connection halfway; ``barrier`` = (path, threading.Barrier) holds each
    request for that path until the barrier's parties have all arrived."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop: set[str] = set()
        self.stall: set[str] = set()
        self.barrier: tuple[str, threading.Barrier] | None = None
        self.hits: collections.Counter = collections.Counter()
        self.release = threading.Event()  # ends the stalled responses
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                if server.barrier is not None and server.barrier[0] == self.path:
                    try:
                        server.barrier[1].wait()
                    except threading.BrokenBarrierError:
                        pass
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.stall:  # half the body, then silence
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    server.release.wait(30)
                    return
                if self.path in server.drop:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def base(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{prefix}/"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_base() -> str:
    """A base URL on a port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def make_files(n_train: int = 5, n_test: int = 3, seed: int = 0):
    """Random MNIST-shaped images and labels per split, and their gzipped IDX files."""
    rng = np.random.default_rng(seed)
    arrays, files = {}, {}
    for split, n, (images_file, labels_file) in (("train", n_train, TRAIN),
                                                 ("test", n_test, TEST)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)  # both ends of the range
        labels = np.arange(n, dtype=np.uint8) % 10
        arrays[split] = images, labels
        files[images_file], files[labels_file] = idx(images), idx(labels)
    return arrays, files


def publish(monkeypatch, server, files, *, name="mnist", prefix="a", mirrors=None,
            hashes=None):
    """Serves ``files`` under /prefix/ and points the data set's mirrors and hashes at them."""
    for filename, raw in files.items():
        server.files[f"/{prefix}/{filename}"] = raw
    hashes = {filename: sha(raw) for filename, raw in files.items()} if hashes is None else hashes
    monkeypatch.setitem(_datasets._SHA256, name, hashes)
    monkeypatch.setitem(_datasets._MIRRORS, name,
                        (server.base(prefix),) if mirrors is None else tuple(mirrors))
    return hashes


def listing(root: Path) -> list[str]:
    """Every file under ``root`` (temporary files included), relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real cache directory, no proxy for 127.0.0.1, a short network timeout."""
    monkeypatch.delenv("FNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(variable, "127.0.0.1,localhost")
    monkeypatch.setattr(_datasets, "_TIMEOUT", 10.0)


@pytest.fixture
def server():
    running = Server()
    yield running
    running.close()


# ------------------------------------------------------------------ loading and the cache


def test_load_returns_float32_pixels_over_255_and_int32_labels(server, monkeypatch, tmp_path):
    arrays, files = make_files()
    publish(monkeypatch, server, files)
    cache = tmp_path / "cache"
    for split in ("train", "test"):
        x, y = data.load_mnist(split, cache_dir=cache, progress=False)
        images, labels = arrays[split]
        n = len(images)
        assert x.dtype == np.float32 and x.shape == (n, 784)
        assert y.dtype == np.int32 and y.shape == (n,)
        np.testing.assert_array_equal(x, images.reshape(n, 784).astype(np.float32) / 255)
        assert x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_array_equal(x.reshape(-1, 28, 28, 1)[..., 0] * 255, images)
    assert listing(cache) == sorted(f"mnist/{f}" for f in TRAIN + TEST)
    for filename, raw in files.items():
        assert (cache / "mnist" / filename).read_bytes() == raw


def test_a_second_call_reads_the_verified_cache(server, monkeypatch, tmp_path):
    _, files = make_files()
    publish(monkeypatch, server, files)
    first = data.load_mnist(cache_dir=tmp_path, progress=False)
    hits = dict(server.hits)
    assert hits == {f"/a/{f}": 1 for f in TRAIN}  # the train split only
    second = data.load_mnist(cache_dir=tmp_path, progress=False)
    assert dict(server.hits) == hits
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("failure", ["404", "refused"])
def test_a_failing_first_mirror_falls_through_to_the_next(failure, server, monkeypatch,
                                                          tmp_path):
    arrays, files = make_files()
    first = server.base("missing") if failure == "404" else closed_port_base()
    publish(monkeypatch, server, files, mirrors=(first, server.base("a")))
    x, y = data.load_mnist("test", cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(y, arrays["test"][1])
    if failure == "404":
        assert server.hits[f"/missing/{TEST[0]}"] == 1
    assert listing(tmp_path) == sorted(f"mnist/{f}" for f in TEST)


def test_a_checksum_mismatch_fails_the_mirror_and_leaves_no_file(server, monkeypatch, tmp_path):
    _, files = make_files()
    good = dict(files)
    bad = bytearray(files[TRAIN[0]])
    bad[-20] ^= 0xFF
    files[TRAIN[0]] = bytes(bad)
    hashes = {f: sha(raw) for f, raw in good.items()}
    publish(monkeypatch, server, files, hashes=hashes)
    with pytest.raises(data.DownloadError) as caught:
        data.load_mnist(cache_dir=tmp_path, progress=False)
    message = str(caught.value)
    assert f"checksum mismatch: expected {hashes[TRAIN[0]]} got {sha(bytes(bad))}" in message
    assert server.base("a") + TRAIN[0] in message
    assert listing(tmp_path) == []  # nothing under the final name, no temporary file

    # the same corrupted copy on a first mirror: the second mirror's good copy is used
    for filename, raw in good.items():
        server.files[f"/b/{filename}"] = raw
    monkeypatch.setitem(_datasets._MIRRORS, "mnist", (server.base("a"), server.base("b")))
    x, _ = data.load_mnist(cache_dir=tmp_path, progress=False)
    assert (tmp_path / "mnist" / TRAIN[0]).read_bytes() == good[TRAIN[0]]
    assert listing(tmp_path) == sorted(f"mnist/{f}" for f in TRAIN)


def test_a_connection_dropped_mid_file_fails_the_mirror_and_leaves_no_file(server, monkeypatch,
                                                                           tmp_path):
    _, files = make_files()
    publish(monkeypatch, server, files)
    server.drop.add(f"/a/{TRAIN[0]}")
    size = len(files[TRAIN[0]])
    with pytest.raises(data.DownloadError) as caught:
        data.load_mnist(cache_dir=tmp_path, progress=False)
    assert f"connection closed after {size // 2} of {size} bytes" in str(caught.value)
    assert listing(tmp_path) == []


def test_a_stalled_mirror_times_out_and_the_next_is_tried(server, monkeypatch, tmp_path):
    arrays, files = make_files()
    publish(monkeypatch, server, files, prefix="slow")
    publish(monkeypatch, server, files, mirrors=(server.base("slow"), server.base("a")))
    server.stall.add(f"/slow/{TEST[0]}")
    monkeypatch.setattr(_datasets, "_TIMEOUT", 0.3)
    x, _ = data.load_mnist("test", cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(x * 255, arrays["test"][0].reshape(-1, 784))
    assert server.hits[f"/a/{TEST[0]}"] == 1
    assert listing(tmp_path) == sorted(f"mnist/{f}" for f in TEST)

    server.files.pop(f"/a/{TEST[0]}")  # now the only copy stalls
    (tmp_path / "mnist" / TEST[0]).unlink()
    with pytest.raises(data.DownloadError) as caught:
        data.load_mnist("test", cache_dir=tmp_path, progress=False)
    size, message = len(files[TEST[0]]), str(caught.value)
    assert (f"{server.base('slow')}{TEST[0]}: connection lost after {size // 2} of {size} bytes "
            "(timed out after 0.3 s)") in message, message
    assert f"{server.base('a')}{TEST[0]}: HTTP 404" in message, message


def test_a_mirror_sending_too_much_is_refused(server, monkeypatch, tmp_path):
    _, files = make_files()
    publish(monkeypatch, server, files)
    monkeypatch.setattr(_datasets, "_MAX_BYTES", 1000)
    with pytest.raises(data.DownloadError, match="refused: .* bytes announced"):
        data.load_mnist("test", cache_dir=tmp_path, progress=False)
    assert listing(tmp_path) == []


def test_offline_names_every_url_the_cache_directory_and_the_fix(server, monkeypatch, tmp_path):
    _, files = make_files()
    mirrors = (closed_port_base(), closed_port_base().replace("/mnist/", "/other/"))
    publish(monkeypatch, server, files, mirrors=mirrors)
    with pytest.raises(data.DownloadError) as caught:
        data.load_mnist(progress=False)  # the default cache directory, under XDG_CACHE_HOME
    error = caught.value
    message = str(error)
    directory = tmp_path / "xdg" / "fnn" / "datasets" / "mnist"
    assert isinstance(error, OSError)
    assert message.startswith(f"load_mnist: could not download {TRAIN[0]}")
    for base in mirrors:
        assert f"{base}{TRAIN[0]}: Connection refused" in message
    assert f"Cache directory: {directory}" in message
    assert "FNN_DATA_DIR" in message and "network" in message
    assert error.directory == str(directory) and error.file == TRAIN[0]
    assert [url for url, _ in error.attempts] == [base + TRAIN[0] for base in mirrors]
    assert error.__cause__ is not None  # the urllib error, chained, not shown as the error
    assert listing(tmp_path / "xdg") == []
    assert oct(os.stat(tmp_path / "xdg" / "fnn").st_mode & 0o777) == "0o700"


def test_a_damaged_cached_file_is_reported_and_downloaded_again(server, monkeypatch, tmp_path):
    arrays, files = make_files()
    publish(monkeypatch, server, files)
    data.load_mnist(cache_dir=tmp_path, progress=False)
    cached = tmp_path / "mnist" / TRAIN[1]
    cached.write_bytes(b"not the labels")
    with pytest.warns(UserWarning, match=f"{cached}.*SHA-256 {sha(b'not the labels')}"):
        _, y = data.load_mnist(cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(y, arrays["train"][1])
    assert server.hits[f"/a/{TRAIN[1]}"] == 2
    assert cached.read_bytes() == files[TRAIN[1]]

    # damaged and offline: an error that says why the cached copy was not used
    cached.write_bytes(b"not the labels")
    monkeypatch.setitem(_datasets._MIRRORS, "mnist", (closed_port_base(),))
    with pytest.warns(UserWarning), pytest.raises(data.DownloadError) as caught:
        data.load_mnist(cache_dir=tmp_path, progress=False)
    assert f"The cached {cached} has SHA-256" in str(caught.value)


def test_the_cache_directory_is_cache_dir_then_FNN_DATA_DIR_then_XDG_then_home(
        server, monkeypatch, tmp_path):
    _, files = make_files()
    publish(monkeypatch, server, files)
    expected = sorted(f"mnist/{f}" for f in TEST)

    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path / "env"))
    data.load_mnist("test", progress=False)
    assert listing(tmp_path / "env") == expected
    data.load_mnist("test", cache_dir=tmp_path / "arg", progress=False)  # the argument wins
    assert listing(tmp_path / "arg") == expected

    monkeypatch.delenv("FNN_DATA_DIR")
    data.load_mnist("test", progress=False)
    assert listing(tmp_path / "xdg" / "fnn" / "datasets") == expected

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data.load_mnist("test", progress=False)
    assert listing(tmp_path / "home" / ".cache" / "fnn" / "datasets") == expected
    assert not (Path.home() / "mnist").exists()


def test_a_read_only_cache_with_valid_files_is_enough(server, monkeypatch, tmp_path):
    """Loading needs no write access (a shared, read-only FNN_DATA_DIR): nothing is created."""
    arrays, files = make_files()
    publish(monkeypatch, server, files, mirrors=(closed_port_base(),))
    (tmp_path / "mnist").mkdir()
    for filename in TEST:
        (tmp_path / "mnist" / filename).write_bytes(files[filename])
    os.chmod(tmp_path / "mnist", 0o555)
    try:
        x, y = data.load_mnist("test", cache_dir=tmp_path, progress=False)
    finally:
        os.chmod(tmp_path / "mnist", 0o755)
    np.testing.assert_array_equal(y, arrays["test"][1])


def test_an_empty_cache_dir_is_refused():
    with pytest.raises(ValueError, match="cache_dir is empty"):
        data.load_mnist(cache_dir="", progress=False)


@pytest.mark.parametrize("split", ["validation", "Train", "", None, 0, ["train"]])
def test_a_bad_split_is_a_value_error_naming_the_splits(split, server, monkeypatch, tmp_path):
    _, files = make_files()
    publish(monkeypatch, server, files)
    for loader in (data.load_mnist, data.load_fashion_mnist):
        with pytest.raises(ValueError, match=r"split must be 'train' or 'test'; got "):
            loader(split, cache_dir=tmp_path, progress=False)
    assert not server.hits and listing(tmp_path) == []


MALFORMED = {
    "bad magic": (lambda images: idx(images, magic=0x0000_0801), "magic number 0x00000801, "
                  "expected 0x00000803"),
    "short data": (lambda images: gzip.compress(gzip.decompress(idx(images))[:-5]),
                   r"announces shape \(5, 28, 28\) \(3920 bytes of data\); the file holds 3915"),
    "not gzip": (lambda images: b"plain bytes, not gzip", "is not a gzipped IDX file"),
    "not 28x28": (lambda images: idx(images[:, :, :27]), r"images of shape \(28, 27\)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_file_with_a_matching_hash_is_a_clear_error(case, server, monkeypatch,
                                                                tmp_path):
    arrays, files = make_files()
    make, message = MALFORMED[case]
    files[TRAIN[0]] = make(arrays["train"][0])
    publish(monkeypatch, server, files)  # hashes of the malformed bytes: the download succeeds
    with pytest.raises(ValueError, match=message) as caught:
        data.load_mnist(cache_dir=tmp_path, progress=False)
    assert TRAIN[0] in str(caught.value)


def test_labels_must_match_the_images(server, monkeypatch, tmp_path):
    arrays, files = make_files()
    files[TRAIN[1]] = idx(arrays["train"][1][:4])
    publish(monkeypatch, server, files)
    with pytest.raises(ValueError, match=f"{TRAIN[1]} holds 4 labels for the 5 images"):
        data.load_mnist(cache_dir=tmp_path, progress=False)


def test_a_failure_while_saving_removes_the_temporary_file(server, monkeypatch, tmp_path):
    _, files = make_files()
    publish(monkeypatch, server, files)

    def full_disk(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_datasets.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left") as caught:
        data.load_mnist(cache_dir=tmp_path, progress=False)
    assert not isinstance(caught.value, data.DownloadError)  # the disk's fault, not a mirror's
    assert listing(tmp_path) == []


def test_fashion_mnist_has_its_own_mirrors_and_directory(server, monkeypatch, tmp_path):
    arrays, files = make_files(seed=1)
    publish(monkeypatch, server, files, name="fashion_mnist", prefix="fashion")
    x, y = data.load_fashion_mnist("test", cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(x * 255, arrays["test"][0].reshape(-1, 784))
    assert listing(tmp_path) == sorted(f"fashion_mnist/{f}" for f in TEST)


def test_DATASETS_offers_the_train_splits(server, monkeypatch, tmp_path):
    arrays, files = make_files()
    publish(monkeypatch, server, files)
    assert data.DATASETS["mnist"] is data.load_mnist
    assert data.DATASETS["fashion_mnist"] is data.load_fashion_mnist
    assert {"digits", "iris"} <= set(data.DATASETS)
    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path))
    _, y = data.DATASETS["mnist"]()
    np.testing.assert_array_equal(y, arrays["train"][1])


def test_the_real_tables_are_complete():
    for name in ("mnist", "fashion_mnist"):
        assert set(_datasets._SHA256[name]) == set(TRAIN + TEST)
        for digest in _datasets._SHA256[name].values():
            assert len(digest) == 64 and int(digest, 16) >= 0
        assert len(_datasets._MIRRORS[name]) >= 2
        assert all(base.endswith("/") for base in _datasets._MIRRORS[name])


# ------------------------------------------------------------------ progress


def test_a_progress_bar_per_file_when_tqdm_is_there(server, monkeypatch, tmp_path, capsys):
    _, files = make_files()
    publish(monkeypatch, server, files)
    data.load_mnist("test", cache_dir=tmp_path)
    err = capsys.readouterr().err
    assert f"mnist {TEST[0]}" in err and f"mnist {TEST[1]}" in err


def test_without_tqdm_the_download_is_silent(server, monkeypatch, tmp_path, capsys):
    _, files = make_files()
    publish(monkeypatch, server, files)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    monkeypatch.setitem(sys.modules, "tqdm", None)
    x, _ = data.load_mnist("test", cache_dir=tmp_path, progress=True)
    assert x.shape == (3, 784)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ concurrency

# the child runs fnn/_datasets.py as a module of its own (it needs only the standard library and
# NumPy): the same code, without the second or two of importing jax through the fnn package
CHILD = """
import importlib.util, json, sys
path, base, hashes, cache = sys.argv[1:]
spec = importlib.util.spec_from_file_location("fnn_datasets_child", path)
_datasets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_datasets)
_datasets._MIRRORS["mnist"] = (base,)
_datasets._SHA256["mnist"] = json.loads(hashes)
x, y = _datasets.load_mnist(cache_dir=cache, progress=False)
print(x.shape, float(x.sum()), y.tolist())
"""


def test_two_processes_filling_one_empty_cache_both_succeed(server, monkeypatch, tmp_path):
    """Both download the images at the same time (the server holds each request until both
    have arrived), each to its own temporary file, and rename the verified file into place."""
    _, files = make_files()
    hashes = publish(monkeypatch, server, files)
    server.barrier = (f"/a/{TRAIN[0]}", threading.Barrier(2, timeout=60))
    environment = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    command = [sys.executable, "-c", CHILD, _datasets.__file__, server.base("a"), json.dumps(hashes),
               str(tmp_path)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=environment) for _ in range(2)]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err[-2000:]
    assert outputs[0][0] == outputs[1][0] and "(5, 784)" in outputs[0][0]
    assert server.hits[f"/a/{TRAIN[0]}"] == 2  # really two downloads, at once
    assert listing(tmp_path) == sorted(f"mnist/{f}" for f in TRAIN)
    for filename in TRAIN:
        assert (tmp_path / "mnist" / filename).read_bytes() == files[filename]


# ------------------------------------------------------------------ python -m fnn --dataset mnist


def test_the_cli_loads_mnist_with_784_features_and_checks_the_batch_size(server, monkeypatch,
                                                                         tmp_path):
    """The data path of ``python -m fnn --dataset mnist`` (no compilation: fast)."""
    _, files = make_files(n_train=40)
    publish(monkeypatch, server, files)
    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path))
    (x_train, y_train), (x_val, y_val), classes = cli.load("mnist", 0, "center", progress=False)
    assert x_train.shape == (32, 784) and x_val.shape == (8, 784) and classes == 10
    args = cli.build_parser().parse_args(["train", "--dataset", "mnist", "--hidden", "8"])
    with pytest.raises(ValueError, match="--batch-size 64 is larger than the 32 training "
                                         "examples of mnist"):
        cli.experiment(args)  # the CLI's own validation, unchanged


def test_the_cli_trains_on_mnist_from_the_mirror(server, monkeypatch, tmp_path, capsys):
    _, files = make_files(n_train=40)
    publish(monkeypatch, server, files)
    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path))
    status = cli.main(["--dataset", "mnist", "--optimizer", "adam", "--epochs", "1",
                       "--batch-size", "8", "--hidden", "16", "--no-plot", "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "mnist: 32 training / 8 validation examples" in out
    assert "MLP 784-16-16-10" in out
    assert err == ""  # --no-progress hides the download bars too
    assert listing(tmp_path) == sorted(f"mnist/{f}" for f in TRAIN)


def test_the_cli_offline_prints_the_download_error_not_a_traceback(server, monkeypatch, tmp_path,
                                                                   capsys):
    _, files = make_files()
    publish(monkeypatch, server, files, mirrors=(closed_port_base(),))
    monkeypatch.setenv("FNN_DATA_DIR", str(tmp_path))
    status = cli.main(["--dataset", "mnist", "--epochs", "1", "--no-plot", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"python -m fnn train: error: load_mnist: could not download {TRAIN[0]}")
    assert f"Cache directory: {tmp_path / 'mnist'}" in err
    assert "Traceback" not in err
