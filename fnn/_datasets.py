"""Data sets: digits and iris shipped with scikit-learn; MNIST and Fashion-MNIST downloaded once.

Public through :mod:`fnn.data`: ``load_digits``, ``load_iris``, ``load_mnist``,
``load_fashion_mnist``, ``DATASETS`` and ``DownloadError``.

MNIST and Fashion-MNIST come as the standard gzipped IDX files. The first call
downloads the files of the split it needs from a list of public mirrors, tried
in order, into a cache directory, one subdirectory per data set:

* the ``cache_dir`` argument, if given; else
* ``$FNN_DATA_DIR``, if set; else
* ``$XDG_CACHE_HOME/fnn/datasets``, or ``~/.cache/fnn/datasets``.

Every file is checked against the SHA-256 recorded here, when it is downloaded
(a mirror that serves other bytes counts as a failed mirror) and each time it is
read from the cache (a damaged cached file is downloaded again, with a
warning). A download goes to a uniquely named temporary file in the cache
directory and is renamed into place only once verified, so no partial or
unverified file ever carries the final name, and several processes can fill one
cache at once. Offline, put the files in the data set's directory yourself:
they are used if their hashes match. The files are parsed with NumPy alone
(nothing is unpickled).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import math
import os
import secrets
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR_ENV = "FNN_DATA_DIR"

# Mirrors, tried in order; a file's URL is the base followed by its name.
_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # tensorflow_datasets' mirror
        "http://yann.lecun.com/exdb/mnist/",  # the original site (at times refuses downloads)
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's (HTTP only)
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        # Keras's copy (the same file names and byte counts; checked by hash like the others)
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
}

# SHA-256 of each .gz file. Sources, which agree on every hash:
# - tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt and fashion_mnist.txt
#   (commits 31f1255e and 333639b3; they also give the sizes noted below);
# - pytorch/vision, torchvision/prototype/datasets/_builtin/mnist.py (MNIST._CHECKSUMS and
#   FashionMNIST._CHECKSUMS, commit 1ec2509e);
# - ankane/torchvision-ruby, lib/torchvision/datasets/mnist.rb and fashion_mnist.rb (resources).
_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        # 9,912,422 bytes
        "train-images-idx3-ubyte.gz":
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        # 28,881 bytes
        "train-labels-idx1-ubyte.gz":
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        # 1,648,877 bytes
        "t10k-images-idx3-ubyte.gz":
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        # 4,542 bytes
        "t10k-labels-idx1-ubyte.gz":
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion_mnist": {
        # 26,421,880 bytes
        "train-images-idx3-ubyte.gz":
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        # 29,515 bytes
        "train-labels-idx1-ubyte.gz":
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        # 4,422,102 bytes
        "t10k-images-idx3-ubyte.gz":
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        # 5,148 bytes
        "t10k-labels-idx1-ubyte.gz":
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

_SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
           "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_TIMEOUT = 30.0  # seconds a connection attempt or a read may stall before the mirror fails
_CHUNK = 1 << 16
_MAX_BYTES = 64 << 20  # the largest file is 26 MB: a mirror sending more is sending another file
_USER_AGENT = "fnn-datasets (Python urllib)"


class DownloadError(OSError):
    """A data file could not be downloaded from any mirror (and no valid cached copy exists).

    The message names the file, every URL tried with the reason it failed, the
    cache directory, and how to fix it. ``attempts`` holds ``(url, reason)`` pairs.
    """

    def __init__(self, message: str, *, file: str | None = None,
                 attempts: tuple[tuple[str, str], ...] = (), directory: str | None = None):
        super().__init__(message)
        self.file = file
        self.attempts = attempts
        self.directory = directory


DownloadError.__module__ = "fnn.data"  # its public name (tracebacks, pickling)


class _MirrorFailed(Exception):
    """One mirror did not deliver a verified file; ``reason`` is short, for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------ scikit-learn


def _sklearn(loader: str):
    try:
        import sklearn.datasets
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{loader} needs scikit-learn: pip install scikit-learn (or install fnn with its "
            "examples extra: pip install \"fnn[examples]\")."
        ) from error
    return sklearn.datasets


def _sklearn_file(name: str) -> str | None:
    """The path of a data file shipped inside scikit-learn, found without importing it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)
    return path if os.path.exists(path) else None


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8×8 handwritten digits shipped with scikit-learn (1797 examples, 10 classes).

    The data file is read straight from the scikit-learn package (importing
    ``sklearn.datasets`` costs a second of start-up); if the file is not where
    it is expected, ``sklearn.datasets.load_digits`` is used.

    Returns:
      ``(x, y)``: x float32 of shape (1797, 64) scaled to [0, 1], y int32 labels 0–9.

    Example:
        >>> x, y = fnn.data.load_digits()
    """
    path = _sklearn_file("digits.csv.gz")
    if path is not None:
        table = np.loadtxt(path, delimiter=",")
        data, target = table[:, :-1], table[:, -1]
    else:
        digits = _sklearn("load_digits").load_digits()
        data, target = digits.data, digits.target
    return (data / 16.0).astype(np.float32), target.astype(np.int32)


def load_iris() -> tuple[np.ndarray, np.ndarray]:
    """Fisher's iris data shipped with scikit-learn (150 examples, 4 features, 3 classes).

    Example:
        >>> x, y = fnn.data.load_iris()
    """
    iris = _sklearn("load_iris").load_iris()
    return iris.data.astype(np.float32), iris.target.astype(np.int32)


# ------------------------------------------------------------------ the cache


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """The cache directory: ``cache_dir``, else $FNN_DATA_DIR, else the XDG cache's fnn/datasets."""
    if cache_dir is not None:
        text = os.fspath(cache_dir)
        if not str(text).strip():
            raise ValueError("cache_dir is empty; give a directory, or None for the default.")
        return Path(text).expanduser()
    value = os.environ.get(DATA_DIR_ENV, "")
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # relative: ignored (XDG)
    return base / "fnn" / "datasets"


def _make_directory(directory: Path, default: bool) -> None:
    try:
        if default:  # ~/.cache/fnn also holds the optimizers' compiled kernels: keep it private
            fnn_directory = directory.parent.parent
            fnn_directory.parent.mkdir(parents=True, exist_ok=True)
            if not fnn_directory.exists():
                try:
                    os.mkdir(fnn_directory, 0o700)
                except FileExistsError:
                    pass
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"cannot create the data cache directory {directory} ({error.strerror or error}); "
            f"set {DATA_DIR_ENV} (or pass cache_dir=) to a directory you can write."
        ) from error


def _temporary_file(path: Path) -> tuple[Path, Any]:
    """A new, uniquely named file beside ``path``, opened for writing.

    Created like ``tempfile.mkstemp`` (O_EXCL, a random name) but with mode 0o666 less the
    umask, so a cache directory shared by a group stays readable once the file is renamed.
    """
    for _ in range(100):
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        except OSError as error:
            raise OSError(
                f"cannot write in the data cache directory {path.parent} "
                f"({error.strerror or error}); set {DATA_DIR_ENV} (or pass cache_dir=) to a "
                "directory you can write."
            ) from error
        return temporary, os.fdopen(fd, "wb")
    raise FileExistsError(f"no free temporary name beside {path}")  # pragma: no cover


# ------------------------------------------------------------------ downloading


def _reason(error: BaseException) -> str:
    """A short description of a network error, for the list of failed mirrors."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        if not isinstance(error.reason, BaseException):
            return str(error.reason)
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"timed out after {_TIMEOUT:g} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _progress_bar(enabled: bool, total: int | None, description: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (the examples extra): download silently
        return None
    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False)


_NETWORK_ERRORS = (OSError, http.client.HTTPException)  # URLError, timeouts, IncompleteRead, ...


def _download(url: str, file: Any, expected: str, description: str, progress: bool) -> None:
    """Writes the body at ``url`` to ``file``; raises _MirrorFailed unless it has SHA-256
    ``expected``. Errors writing ``file`` (a full disk) propagate: they are not the mirror's."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:  # an opener per call: proxy settings are read from the environment now
        response = urllib.request.build_opener().open(request, timeout=_TIMEOUT)
    except (*_NETWORK_ERRORS, ValueError) as error:
        if isinstance(error, urllib.error.HTTPError):
            error.close()
        raise _MirrorFailed(_reason(error)) from error
    with response:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.strip().isdigit() else None
        if total is not None and total > _MAX_BYTES:
            raise _MirrorFailed(f"refused: {total} bytes announced, more than any such file")
        digest, received = hashlib.sha256(), 0
        read = getattr(response, "read1", response.read)  # read1: whatever has arrived
        bar = _progress_bar(progress, total, description)
        try:
            while True:
                try:
                    chunk = read(_CHUNK)
                except _NETWORK_ERRORS as error:
                    of = f" of {total}" if total is not None else ""
                    raise _MirrorFailed(f"connection lost after {received}{of} bytes "
                                        f"({_reason(error)})") from error
                if not chunk:
                    break
                received += len(chunk)
                if received > _MAX_BYTES:
                    raise _MirrorFailed(f"refused: more than {_MAX_BYTES} bytes sent")
                digest.update(chunk)
                file.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise _MirrorFailed(f"connection closed after {received} of {total} bytes")
    actual = digest.hexdigest()
    if actual != expected:
        raise _MirrorFailed(f"checksum mismatch: expected {expected} got {actual}")


def _fetch(owner: str, name: str, filename: str, cache_dir: str | os.PathLike | None,
           progress: bool) -> bytes:
    """The verified bytes of data set ``name``'s file ``filename``, from the cache or a mirror."""
    expected = _SHA256[name][filename]
    directory = _cache_root(cache_dir) / name
    path = directory / filename
    damaged = None
    if path.is_file():
        raw = path.read_bytes()
        actual = hashlib.sha256(raw).hexdigest()
        if actual == expected:
            return raw
        damaged = (f"The cached {path} has SHA-256 {actual}, not the expected {expected}, "
                   "so it was not used.")
        warnings.warn(f"{owner}: {damaged} Downloading it again.", stacklevel=4)

    default = cache_dir is None and not os.environ.get(DATA_DIR_ENV, "")
    _make_directory(directory, default)
    attempts: list[tuple[str, str]] = []
    cause: BaseException | None = None
    for base in _MIRRORS[name]:
        url = base if base.endswith("/") else base + "/"
        url += filename
        temporary, file = _temporary_file(path)
        try:
            with file:
                _download(url, file, expected, f"{name} {filename}", progress)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)  # atomic: readers see no file or the verified one
        except _MirrorFailed as error:
            attempts.append((url, error.reason))
            cause = error.__cause__ or error
            continue
        finally:
            temporary.unlink(missing_ok=True)  # gone after os.replace; else removed here
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != expected:  # pragma: no cover - replaced meanwhile
            raise OSError(f"{owner}: {path} changed while it was being loaded; call again.")
        return raw

    tried = "\n".join(f"  {url}: {reason}" for url, reason in attempts) or "  (no mirrors)"
    files = ", ".join(_SHA256[name])
    message = (
        f"{owner}: could not download {filename}; every mirror failed:\n{tried}\n"
        + (f"{damaged}\n" if damaged else "")
        + f"Cache directory: {directory}\n"
        f"To fix: connect to the network and call again; or copy the files ({files}) into that "
        f"directory by other means (each is checked against its SHA-256); or set "
        f"{DATA_DIR_ENV} (or pass cache_dir=) to a directory whose {name}/ subdirectory "
        "holds them."
    )
    raise DownloadError(message, file=filename, attempts=tuple(attempts),
                        directory=str(directory)) from cause


# ------------------------------------------------------------------ IDX files


def _parse_idx(compressed: bytes, path: Path, ndim: int) -> np.ndarray:
    """The uint8 array in a gzipped IDX file of ``ndim`` dimensions, after checking its header."""
    try:
        raw = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path} is not a gzipped IDX file: {error}.") from error
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes are too few for an IDX header of {ndim} "
                         "dimensions.")
    magic, expected = int.from_bytes(raw[:4], "big"), 0x0800 | ndim
    if magic != expected:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimensions: "
                         f"magic number {magic:#010x}, expected {expected:#010x}.")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    size = math.prod(dims)
    if len(raw) - header != size:
        raise ValueError(f"{path}: the header announces shape {dims} ({size} bytes of data); "
                         f"the file holds {len(raw) - header}.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _load_idx(owner: str, name: str, split: Any, cache_dir: str | os.PathLike | None,
              progress: bool) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(split, str) or split not in _SPLITS:
        raise ValueError(f"{owner}: split must be 'train' or 'test'; got {split!r}.")
    images_file, labels_file = _SPLITS[split]
    directory = _cache_root(cache_dir) / name
    images = _parse_idx(_fetch(owner, name, images_file, cache_dir, progress),
                        directory / images_file, 3)
    labels = _parse_idx(_fetch(owner, name, labels_file, cache_dir, progress),
                        directory / labels_file, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{owner}: {directory / images_file} holds images of shape "
                         f"{images.shape[1:]}, expected (28, 28).")
    if len(labels) != len(images):
        raise ValueError(f"{owner}: {directory / labels_file} holds {len(labels)} labels for the "
                         f"{len(images)} images of {images_file}.")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{owner}: {directory / labels_file} holds the label "
                         f"{int(labels.max())}; expected 0 to 9.")
    x = images.reshape(len(images), 28 * 28).astype(np.float32)
    x /= np.float32(255)
    return x, labels.astype(np.int32)


def load_mnist(split: str = "train", *, cache_dir: str | os.PathLike | None = None,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST handwritten digits, 28×28 pixels: 60,000 training and 10,000 test images.

    Downloaded on first use (11.6 MB for both splits) from the first mirror that
    works, verified by SHA-256 and cached; later calls read the cache (re-verified).
    The cache directory is ``cache_dir``, else ``$FNN_DATA_DIR``, else
    ``$XDG_CACHE_HOME/fnn/datasets`` or ``~/.cache/fnn/datasets``; the files go in
    its ``mnist/`` subdirectory, where you may also put them by hand.

    Args:
      split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).
      cache_dir: the cache directory (default: as above).
      progress: show a tqdm progress bar per downloaded file (if tqdm is installed).

    Returns:
      ``(x, y)``, the form :func:`load_digits` returns: x float32 of shape (N, 784),
      pixels scaled to [0, 1] row by row; y int32 labels 0–9. For a convolutional
      model, ``x.reshape(-1, 28, 28, 1)`` gives the NHWC images ``fnn.Conv2D`` takes.

    Raises:
      ValueError: an unknown ``split``, or a file that is not a valid IDX file.
      DownloadError: no valid cached copy and every mirror failed (offline); the
        message lists the URLs tried and the cache directory.

    Example:
        >>> x, y = fnn.data.load_mnist()                  # (60000, 784) float32, (60000,) int32
        >>> x_test, y_test = fnn.data.load_mnist("test")
        >>> images = x.reshape(-1, 28, 28, 1)             # for Conv2D
    """
    return _load_idx("load_mnist", "mnist", split, cache_dir, progress)


def load_fashion_mnist(split: str = "train", *, cache_dir: str | os.PathLike | None = None,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Zalando): 28×28 pictures of clothes in 10 classes, 60,000 + 10,000.

    The classes: 0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal,
    6 shirt, 7 sneaker, 8 bag, 9 ankle boot. Downloaded, verified and cached like
    :func:`load_mnist` (30 MB), in the cache directory's ``fashion_mnist/``.

    Args:
      split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).
      cache_dir: the cache directory (default: ``$FNN_DATA_DIR``, else
        ``$XDG_CACHE_HOME/fnn/datasets`` or ``~/.cache/fnn/datasets``).
      progress: show a tqdm progress bar per downloaded file (if tqdm is installed).

    Returns:
      ``(x, y)``: x float32 of shape (N, 784) in [0, 1], y int32 labels 0–9;
      ``x.reshape(-1, 28, 28, 1)`` for ``fnn.Conv2D``.

    Raises:
      ValueError: an unknown ``split``, or a file that is not a valid IDX file.
      DownloadError: no valid cached copy and every mirror failed.

    Example:
        >>> x, y = fnn.data.load_fashion_mnist()
        >>> x_test, y_test = fnn.data.load_fashion_mnist("test", progress=False)
    """
    return _load_idx("load_fashion_mnist", "fashion_mnist", split, cache_dir, progress)


# the data sets `python -m fnn --dataset` offers; each loader called with no argument gives
# the training data (for MNIST and Fashion-MNIST, their train split)
DATASETS = {"digits": load_digits, "iris": load_iris, "mnist": load_mnist,
            "fashion_mnist": load_fashion_mnist}
