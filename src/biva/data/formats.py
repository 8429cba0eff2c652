"""Readers for the on-disk formats of the benchmark datasets.

Every reader returns numpy arrays and raises DatasetError naming the file, what was expected
and what was found. Nothing here knows about splits or likelihoods (see ``registry``).
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biva.data.errors import DatasetError

PathLike = str | os.PathLike[str]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm",
                    ".ppm", ".pbm")


# --------------------------------------------------------------------------- raw bytes / gzip


def read_bytes(path: PathLike) -> bytes:
    """The file's bytes, gunzipped when the file starts with the gzip magic or ends in .gz."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file: {exc}") from exc
    if raw[:2] != b"\x1f\x8b" and path.suffix != ".gz":
        return raw
    if raw[:2] != b"\x1f\x8b":
        raise DatasetError(
            f"{path}: not a gzip file: expected the gzip magic bytes 1f 8b, "
            f"found {raw[:2].hex(' ') or 'an empty file'}"
        )
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DatasetError(
            f"{path}: truncated gzip file: expected a complete gzip stream, found only "
            f"{len(raw)} compressed bytes ending mid-stream ({exc}); download it again"
        ) from exc
    except (OSError, zlib.error) as exc:
        raise DatasetError(
            f"{path}: corrupt gzip file: expected a valid gzip stream, found "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- IDX (MNIST)

IDX_UBYTE = 0x08


def read_idx(path: PathLike, trailing_shape: Sequence[int] = ()) -> np.ndarray:
    """An IDX unsigned-byte array (gzipped or plain) as uint8 (N, *trailing_shape).

    The number of dimensions expected is ``1 + len(trailing_shape)``; magic 0x00000801 for
    labels, 0x00000803 for 28x28 images.
    """
    path = Path(path)
    data = read_bytes(path)
    ndim = 1 + len(trailing_shape)
    expected_magic = (IDX_UBYTE << 8) | ndim
    if len(data) < 4:
        raise DatasetError(
            f"{path}: not an IDX file: expected at least a 4-byte header, found {len(data)} bytes"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DatasetError(
            f"{path}: wrong IDX magic number: expected {expected_magic} "
            f"(0x{expected_magic:08x}: unsigned bytes, {ndim} dimension(s)), found {magic} "
            f"(0x{magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{path}: truncated IDX header: expected {header} bytes, found {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if tuple(dims[1:]) != tuple(trailing_shape):
        raise DatasetError(
            f"{path}: wrong IDX dimensions: expected (N, {', '.join(map(str, trailing_shape))}), "
            f"found {dims}"
        )
    count = int(np.prod(dims))
    if len(data) != header + count:
        raise DatasetError(
            f"{path}: IDX size mismatch: header declares dimensions {dims}, i.e. {header + count} "
            f"bytes in all, found {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------- .amat


def read_amat(path: PathLike, dim: int = 784) -> np.ndarray:
    """A binarized-MNIST ``.amat`` text file (gzipped or plain) as uint8 {0,1} (N, dim).

    One example a line, ``dim`` values ``0``/``1`` separated by whitespace.
    """
    path = Path(path)
    data = read_bytes(path)
    # Canonical files are exactly "d d ... d\n" per line: check that layout vectorised, and
    # fall back to a line-by-line parse (which also pinpoints errors) for anything else.
    width = 2 * dim
    if data and len(data) % width == 0:
        rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, width)
        digits = rows[:, 0::2]
        seps = rows[:, 1::2]
        if (
            np.all((digits == ord("0")) | (digits == ord("1")))
            and np.all(seps[:, :-1] == ord(" "))
            and np.all(seps[:, -1] == ord("\n"))
        ):
            return digits - np.uint8(ord("0"))
    return _read_amat_slow(path, data, dim)


def _read_amat_slow(path: Path, data: bytes, dim: int) -> np.ndarray:
    rows: list[np.ndarray] = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != dim:
            raise DatasetError(
                f"{path}: line {lineno}: expected {dim} values, found {len(tokens)}"
            )
        row = np.zeros(dim, dtype=np.uint8)
        for j, tok in enumerate(tokens):
            if tok == b"1":
                row[j] = 1
            elif tok != b"0":
                shown = tok.decode("utf-8", "replace")
                raise DatasetError(
                    f"{path}: line {lineno}, value {j + 1}: expected 0 or 1, found {shown!r}"
                )
        rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: expected lines of {dim} values 0/1, found no data")
    return np.stack(rows)


# --------------------------------------------------------------------------- pickles (CIFAR-10)


def _numpy_attr(candidates: Sequence[str], name: str) -> object:
    for module in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {candidates} has {name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles of bytes at protocol < 3 call _codecs.encode(str, "latin1"); allow only
    # that codec, since other codec names could reach arbitrary registered codecs.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_pickle_globals() -> dict[tuple[str, str], object]:
    new, old = "numpy._core", "numpy.core"
    reconstruct = _numpy_attr((f"{new}.multiarray", f"{old}.multiarray"), "_reconstruct")
    allowed: dict[tuple[str, str], object] = {
        # What a pickled ndarray needs (the CIFAR batches were written with numpy 1.x names).
        (f"{old}.multiarray", "_reconstruct"): reconstruct,
        (f"{new}.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    try:
        # Protocol-5 pickles (Python >= 3.14's default) rebuild arrays with _frombuffer.
        frombuffer = _numpy_attr((f"{new}.numeric", f"{old}.numeric"), "_frombuffer")
    except ImportError:
        pass
    else:
        allowed[(f"{old}.numeric", "_frombuffer")] = frombuffer
        allowed[(f"{new}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build containers, scalars and numpy arrays, and imports nothing else.

    Unpickling runs whatever callable the file names; refusing every other global keeps a
    malicious "CIFAR batch" from executing code.
    """

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> object:
        obj = self._allowed.get((module, name))
        if obj is None:
            raise DatasetError(
                f"{self._source}: refusing to unpickle a reference to {module}.{name}: "
                "expected only dicts, lists, bytes, numbers and numpy arrays (a CIFAR-10 batch); "
                "the file may be malicious"
            )
        return obj


def load_array_pickle(path: PathLike) -> object:
    """Unpickle a data-only file (dicts, lists, bytes, numbers, numpy arrays), refusing code."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _ArrayOnlyUnpickler(fh, path).load()
    except DatasetError:
        raise
    except Exception as exc:  # unpickling can fail in many ways on a corrupt file
        raise DatasetError(
            f"{path}: cannot unpickle: expected a python pickle of a dict, found "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- MATLAB .mat


def read_mat(path: PathLike, required: Sequence[str]) -> dict[str, np.ndarray]:
    """The variables of a MATLAB v4/v5 ``.mat`` file (DatasetError if a ``required`` key is
    absent)."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise DatasetError(
            f"{path}: unsupported .mat version: expected MATLAB v4/v5, found {exc}"
        ) from exc
    except Exception as exc:
        raise DatasetError(
            f"{path}: cannot read .mat file: expected a MATLAB v5 file, found "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    found = sorted(k for k in mat if not k.startswith("__"))
    missing = [k for k in required if k not in mat]
    if missing:
        raise DatasetError(
            f"{path}: missing variable(s) {missing}: expected keys {list(required)}, "
            f"found {found}"
        )
    return {k: mat[k] for k in found}


# --------------------------------------------------------------------------- .npz


def read_npz(path: PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file (object arrays refused: they would need pickle)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # A FIFO would block the open forever (no writer), a device never end.
        raise DatasetError(f"{path}: not a regular file (a folder, FIFO or device); expected an "
                           ".npz archive of arrays")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise DatasetError(
            f"{path}: cannot read .npz file: expected a numpy .npz archive of plain arrays, found "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- images (PIL)


def fit_image(img: object, size: int | None, crop: tuple[int, int, int, int] | None = None):
    """Crop then resize a PIL image to ``size`` x ``size`` (no-op when it already is).

    ``crop`` is a PIL box (left, top, right, bottom); by default the largest centred square.
    Resizing uses a box (area-average) filter, as the downsampled ImageNet files did.
    """
    from PIL import Image

    if size is None or img.size == (size, size):
        return img
    if crop is None:
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        crop = (left, top, left + s, top + s)
    return img.crop(crop).resize((size, size), Image.Resampling.BOX)


#: The largest image accepted, in pixels (e.g. 8,000 x 6,250): larger files are refused by
#: name before any is decoded (a 20,000 x 20,000 PNG would take 1.2 GB as RGB).
MAX_IMAGE_PIXELS = 50_000_000


def _check_name(path: Path) -> None:
    # Names that are not UTF-8 reach Python as lone surrogates; they cannot be written to
    # data_split.json (or shown), so they are refused before a run directory exists.
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(
            f"{path.parent}: file name {os.fsencode(path.name)!r} is not valid UTF-8: rename it "
            "(a run records every image's name in data_split.json)") from None


def is_image_file(path: Path) -> bool:
    """A visible regular file with an image extension (a FIFO or device is not one); its name
    is checked (UTF-8) when it is."""
    ok = (not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
          and path.is_file())
    if ok:
        _check_name(path)
    return ok


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def class_subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted; a link back to the folder or one above it
    (``self -> .``, a loop) is refused by name rather than read as a class."""
    subdirs = []
    root = folder.resolve()
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        _check_name(p)
        if p.is_symlink():
            target = p.resolve()
            if target == root or target in root.parents:
                raise DatasetError(f"{p}: a symbolic link to {target}, which contains it (a "
                                   "loop): remove the link or point it to another folder")
        subdirs.append(p)
    return subdirs


def _open_checked(path: Path):
    """PIL's lazy open (header only) of an image within :data:`MAX_IMAGE_PIXELS`."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DatasetError(f"{path}: image too large to read ({exc}); the largest accepted "
                               f"has {MAX_IMAGE_PIXELS:,} pixels") from None
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        img.close()
        raise DatasetError(f"{path}: image of {w} x {h} = {w * h:,} pixels; the largest accepted "
                           f"has {MAX_IMAGE_PIXELS:,} (e.g. 8,000 x 6,250): shrink it first")
    return img


_GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N")


def _as_8bit(img, path: Path):
    """A PIL image with 16-bit (or 32-bit integer) grey levels mapped to 8-bit "L".

    ``convert("L")`` would clip every level above 255 to white; a 16-bit PNG holds 0..65535.
    """
    if not img.mode.startswith("I"):
        return img
    from PIL import Image

    arr = np.asarray(img).astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise DatasetError(f"{path}: {img.mode} image with levels {lo}..{hi}: expected 16-bit "
                           "grey levels 0..65535")
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def read_images(
    files: Sequence[Path],
    size: int | None = None,
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Decode image files to uint8 (N, C, H, W).

    C is 1 when every file is greyscale ("1", "L", or 16-bit "I;16"/"I", scaled to 0..255),
    else 3 (RGB; alpha dropped). When every file is bilevel (PIL mode "1") the values are
    {0, 1}, otherwise 0..255. ``size`` crops and resizes (see ``fit_image``); without it all
    files must share one size.
    """
    from PIL import Image, UnidentifiedImageError

    if not files:
        raise DatasetError("expected at least one image file, found none")
    modes = []
    for f in files:
        try:
            with _open_checked(f) as img:
                modes.append(img.mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"{f}: unreadable image: {type(exc).__name__}: {exc}") from exc
    bilevel = all(m == "1" for m in modes)
    target = "L" if all(m in _GREY_MODES for m in modes) else "RGB"
    out: np.ndarray | None = None
    first_size = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                img.load()
                img = fit_image(_as_8bit(img, f).convert(target), size, crop)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"{f}: unreadable image: {type(exc).__name__}: {exc}") from exc
        if first_size is None:
            first_size = img.size
        elif img.size != first_size:
            raise DatasetError(
                f"{f}: image size {img.size[0]}x{img.size[1]} differs from {files[0].name}'s "
                f"{first_size[0]}x{first_size[1]}: crop and resize them all to N x N with "
                "--image-size N (or --set data.image_size=N; image_size=N in Python)"
            )
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(files), *arr.shape), dtype=np.uint8)
        out[i] = arr
    assert out is not None
    if bilevel:
        out = (out > 0).astype(np.uint8)
    return out


def read_image_folder(
    folder: PathLike,
    size: int | None = None,
    crop: tuple[int, int, int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None, tuple[str, ...]]:
    """Images of a flat folder, or of one subfolder per class.

    Returns (uint8 (N, C, H, W), int64 labels (N,) or None, class names or None, each image's
    path relative to ``folder``). Classes are the sorted subfolder names (or ``class_names``
    when given, to share one mapping between splits).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: expected a folder of images, found no such folder")
    subdirs = class_subfolders(folder)
    flat = list_images(folder)
    class_dirs = [d for d in subdirs if list_images(d)]
    if class_dirs and flat:
        raise DatasetError(
            f"{folder}: mixed layout: expected either image files or one subfolder of images "
            f"per class, found {len(flat)} files and {len(class_dirs)} subfolders with images"
        )
    if not class_dirs:
        if not flat:
            raise DatasetError(
                f"{folder}: expected image files ({', '.join(IMAGE_EXTENSIONS)}) or one subfolder "
                "of them per class, found none"
            )
        return read_images(flat, size, crop), None, None, tuple(p.name for p in flat)
    names = tuple(class_names) if class_names is not None else tuple(d.name for d in class_dirs)
    index = {n: i for i, n in enumerate(names)}
    files: list[Path] = []
    labels: list[int] = []
    for d in class_dirs:
        if d.name not in index:
            raise DatasetError(
                f"{d}: class folder {d.name!r} is not among the training classes {list(names)}"
            )
        imgs = list_images(d)
        files.extend(imgs)
        labels.extend([index[d.name]] * len(imgs))
    relative = tuple(str(p.relative_to(folder)) for p in files)
    return read_images(files, size, crop), np.asarray(labels, dtype=np.int64), names, relative
