"""Reading .npy and .npz files that may come from anyone: never a pickle, and memory-mapped
wherever the array's bytes lie in the file as they are (a .npy, or an np.savez member).

Every header is read and checked (numpy.lib.format parses it with ast.literal_eval) before any
data: an object array, which only a pickle could rebuild, is refused without being loaded.
"""

from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from nnlab.errors import UserError

HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
}
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


def _header(stream: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from a .npy header, checked; the stream is left at the
    first data byte."""
    try:
        version = npy_format.read_magic(stream)
        shape, fortran, dtype = HEADER_READERS[version](stream)
    except (ValueError, KeyError, EOFError, SyntaxError) as err:
        raise UserError(
            f"{where} is not a NumPy array nnlab can read ({err}). Save arrays with np.save or "
            f"np.savez (format version 1.0 or 2.0)."
        ) from None
    if dtype.hasobject:
        raise UserError(
            f"{where} holds Python objects (dtype {dtype}), which only a pickle can rebuild, and "
            f"nnlab never unpickles data files: a pickle can run any code. Save plain numbers "
            f"(for example np.asarray(x, dtype=np.float32)) or strings for labels."
        )
    return tuple(shape), fortran, dtype


def read_npy(path: Path) -> np.ndarray:
    """The array in a .npy file, memory-mapped (read-only): nothing is read until indexed."""
    with open(path, "rb") as stream:
        shape, _, _ = _header(stream, str(path))
    if math.prod(shape) == 0:
        return np.load(path, allow_pickle=False)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(f"Cannot read {path}: {err}. Is the file complete?") from None


def npz_keys(path: Path) -> list[str]:
    """The names of the arrays in a .npz file (its members, without `.npy`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(
            f"{path} is not a .npz archive ({err}). Save arrays with np.savez(path, x=..., y=...)."
        ) from None
    return [name.removesuffix(".npy") for name in names]


def read_npz(path: Path, key: str) -> np.ndarray:
    """Array `key` of a .npz file: memory-mapped when stored uncompressed (np.savez), else
    (np.savez_compressed) read into memory."""
    where = f"{path} [{key}]"
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        if info.flag_bits & 0x1:
            raise UserError(f"{where} is encrypted; nnlab reads plain np.savez archives.")
        with archive.open(info) as member:
            shape, fortran, dtype = _header(member, where)
    size = math.prod(shape) * dtype.itemsize
    if info.compress_type != zipfile.ZIP_STORED or size == 0:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays[key]
    with open(path, "rb") as stream:
        # The member's bytes start after its local header, whose extra field may differ in
        # length from the central directory's copy: read it there.
        stream.seek(info.header_offset)
        signature, name_length, extra_length = ZIP_LOCAL_HEADER.unpack(stream.read(30))
        start = info.header_offset + 30 + name_length + extra_length
        stream.seek(start)
        _header(stream, where)
        offset = stream.tell()
    if signature != b"PK\x03\x04" or offset - start + size != info.file_size:
        raise UserError(f"{where} is damaged: its size does not match its header.")
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
