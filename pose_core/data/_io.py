"""Small file-reading helpers shared by the dataset loaders (private).

Every helper raises :class:`FileNotFoundError` for a missing path and :class:`ValueError` for a file
that exists but cannot be read as what was expected; both messages name the path and what was
expected, so that a broken dataset is diagnosed from the message alone.
"""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "decode_image_rgb",
    "load_npz_arrays",
    "load_pickle",
    "read_image_rgb",
    "read_text_lines",
    "require_dir",
    "require_file",
]


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path` if it is a directory, else :class:`FileNotFoundError` naming ``what``."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} not found: expected a directory at {p}")
    return p


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path` if it is a file, else :class:`FileNotFoundError` naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: expected a file at {p}")
    return p


def load_npz_arrays(path: str | Path, keys: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` of the ``.npz`` archive ``path`` fully into memory.

    Raises :class:`FileNotFoundError` if ``path`` is missing and :class:`ValueError` if it is not a
    readable ``.npz`` (truncated or corrupt archive, CRC error) or lacks one of ``keys``.
    """
    p = require_file(path, what)
    expected = f"{what} {p} is not a readable .npz archive with keys {list(keys)}"
    try:
        with np.load(p, allow_pickle=False) as npz:
            found = list(npz.files)
            out = {k: npz[k] for k in keys if k in found}
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError, ValueError) as e:
        raise ValueError(f"{expected}: {e!r}") from e
    missing = [k for k in keys if k not in out]
    if missing:
        raise ValueError(f"{what} {p} lacks the arrays {missing}: expected keys {list(keys)}, found {found}")
    return out


def load_pickle(path: str | Path, what: str, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` (Python-2 pickles need ``encoding="latin1"``, the default).

    Raises :class:`FileNotFoundError` if missing and :class:`ValueError` if it is not a valid pickle.
    """
    p = require_file(path, what)
    try:
        with open(p, "rb") as f:
            return pickle.load(f, encoding=encoding)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f"{what} {p} is not a readable pickle: {e!r}") from e


def decode_image_rgb(data: bytes | Path, what: str) -> np.ndarray:
    """Decode an encoded image (bytes or a path) to ``(H, W, 3)`` uint8 RGB; grey is replicated.

    ``what`` names the source in the :class:`ValueError` raised for undecodable data.
    """
    try:
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
        with Image.open(src) as im:
            im.load()
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} is not a decodable image: {e!r}") from e
    if arr.ndim == 2:  # (H, W) grey -> (H, W, 3)
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} decoded to dtype {arr.dtype}, expected 8-bit channels")
    return np.ascontiguousarray(arr)


def read_image_rgb(path: str | Path, what: str) -> np.ndarray:
    """Read an image file to ``(H, W, 3)`` uint8 RGB (see :func:`decode_image_rgb`)."""
    p = require_file(path, what)
    return decode_image_rgb(p, f"{what} {p}")


def read_text_lines(path: str | Path, what: str) -> list[str]:
    """The non-blank lines of a text file, stripped of surrounding whitespace."""
    p = require_file(path, what)
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {p} is not a text file: {e!r}") from e
    return [line.strip() for line in text.splitlines() if line.strip()]
