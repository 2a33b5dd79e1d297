"""Integrity of the files read: a truncated or corrupt file is refused before ITK reads it.

ITK zero-fills a truncated .nii/.nii.gz, reads a .nii.gz with a flipped byte
silently and returns an image after "Uncompress failed" for a compressed .mha,
and its NIfTI reader turns NaN and infinite voxels into 0.  So for NIfTI, NRRD
and MetaImage (compressed or raw, detached data files included) the whole
data stream is decompressed here in pieces, checked to end cleanly (and its
CRC to pass), and its size compared with what the header announces.
"""

from __future__ import annotations

import bz2
import gzip
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from .errors import InvalidInputError

# Decompression is checked in pieces of this many bytes (memory stays small for any file).
INFLATE_CHUNK = 1 << 20
# Header lines longer than this are not a NRRD or MetaImage header (a binary file misnamed).
HEADER_LINE_MAX = 1 << 16


def input_files(path) -> Tuple[Path, ...]:
    """Every file reading `path` touches: itself and a detached header's data file(s).

    For .nhdr, .mhd and .hdr files (header and data apart) the data file is an
    input as much as the header; a pattern or LIST of files is not expanded.
    """
    path = Path(path)
    if path.is_dir():
        return tuple(sorted(p for p in path.iterdir() if p.is_file()))
    files = [path]
    lower = path.name.lower()
    if lower.endswith(".hdr"):
        files += [path.with_suffix(suffix) for suffix in (".img", ".img.gz") if path.with_suffix(suffix).exists()]
    elif lower.endswith((".nhdr", ".nrrd", ".mhd", ".mha")):
        try:
            header = _nrrd_header(path) if lower.endswith((".nhdr", ".nrrd")) else _meta_header(path)
        except OSError:
            header = None  # unreadable: reading it will say so
        if header is not None and header.data_file is not None:
            files.append(header.data_file)
    return tuple(files)


def check_file_integrity(path) -> None:
    """Refuse a NIfTI, NRRD or MetaImage file that is truncated or whose compressed data is damaged.

    Decompresses the whole stream (gzip, zlib or bzip2), which checks that it
    ends cleanly and, for gzip, its CRC; then compares the number of data bytes
    with what the header announces.  Other formats (DICOM, ...) are left to
    their readers.  One line naming the file and what to do otherwise.
    """
    path = Path(path)
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif lower.endswith((".nrrd", ".nhdr")):
        header = _nrrd_header(path)
        if header is not None:
            _check_data(path, header)
    elif lower.endswith((".mha", ".mhd")):
        header = _meta_header(path)
        if header is not None:
            _check_data(path, header)


@dataclass
class _DataLayout:
    """Where a header says the voxel data lies, how it is encoded and how many bytes it has."""

    data_file: Optional[Path]  # None: in the header's own file
    offset: int                # where the data starts in its file
    encoding: str              # "raw", "gzip", "zlib", "bzip2" or "" (not checked)
    expected: Optional[int]    # bytes of voxel data announced (None: unknown)
    skip: int = 0              # bytes before the voxels inside the (decompressed) data


def _check_nifti(path: Path) -> None:
    """A .nii or .nii.gz: the data must reach vox_offset + the voxel bytes, and float voxels must be finite.

    The finite check is here because ITK's NIfTI reader (nifticlib) silently
    turns NaN and infinite voxels into 0, so the image it returns looks clean.
    """
    scan = _NiftiScan()
    if _is_gzip(path):
        size = _inflated_size(path, 0, "gzip", consume=scan.feed)
    else:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(INFLATE_CHUNK), b""):
                scan.feed(chunk)
    if scan.expected is not None and size < scan.expected:
        raise _truncated(path, size, scan.expected, "decompressed " if _is_gzip(path) else "")
    if scan.non_finite:
        raise InvalidInputError(
            f"{path} has {scan.non_finite} NaN or infinite voxels (ITK would read them as 0); replace them "
            "(e.g. with the background value) before registering")


class _NiftiScan:
    """Reads a NIfTI-1 or NIfTI-2 byte stream piece by piece: its expected size and its non-finite float voxels."""

    FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64

    def __init__(self):
        self.expected: Optional[int] = None
        self.non_finite = 0
        self._head = b""
        self._position = 0
        self._offset = 0
        self._dtype: Optional[np.dtype] = None
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the (decompressed) file."""
        if self.expected is None and len(self._head) < 540:
            self._head += chunk[: 540 - len(self._head)]
            if len(self._head) >= 348:
                self._parse_header()
        if self._dtype is not None:
            start = max(0, self._offset - self._position)
            data = self._carry + chunk[start:]
            usable = len(data) - len(data) % self._dtype.itemsize
            values = np.frombuffer(data[:usable], self._dtype)
            self.non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
            self._carry = data[usable:]
        self._position += len(chunk)

    def _parse_header(self) -> None:
        """expected = vox_offset + voxel bytes; the voxel dtype when it is float (None when not NIfTI)."""
        import struct

        head = self._head
        for endian in "<>":
            if struct.unpack(endian + "i", head[:4])[0] == 348 and head[344:347] == b"n+1":
                datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
                dims = struct.unpack(endian + "8h", head[40:56])
                offset = int(struct.unpack(endian + "f", head[108:112])[0])
                break
            if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540 and head[4:7] == b"n+2":
                datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
                dims = struct.unpack(endian + "8q", head[16:80])
                offset = struct.unpack(endian + "q", head[168:176])[0]
                break
        else:
            return
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or offset < 0 or any(d < 0 for d in dims[1:dims[0] + 1]):
            return
        self.expected = offset + math.prod(int(d) for d in dims[1:dims[0] + 1]) * bitpix // 8
        self._offset = offset
        if datatype in self.FLOAT_TYPES:
            self._dtype = np.dtype(endian + self.FLOAT_TYPES[datatype])


_NRRD_TYPE_BYTES = [(r"long ?long|int64", 8), (r"char|int8", 1), (r"short|int16", 2), (r"double", 8),
                    (r"float", 4), (r"int", 4)]
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}


def _nrrd_header(path: Path) -> Optional[_DataLayout]:
    """The data layout of an NRRD header (.nrrd or .nhdr); None when it cannot be parsed."""
    fields = {}
    with open(path, "rb") as stream:
        if not stream.readline(HEADER_LINE_MAX).startswith(b"NRRD000"):
            return None
        while True:
            line = stream.readline(HEADER_LINE_MAX)
            if not line or not line.strip():
                break
            text = line.decode("latin-1").strip()
            if text.startswith("#") or ":=" in text or ":" not in text:
                continue
            key, value = text.split(":", 1)
            fields[key.strip().lower().replace(" ", "")] = value.strip()
        offset = stream.tell()
    type_bytes = next((size for pattern, size in _NRRD_TYPE_BYTES
                       if re.search(pattern, fields.get("type", ""))), None)
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
        skip = int(fields.get("byteskip", "0"))
        line_skip = int(fields.get("lineskip", "0"))
    except ValueError:
        return None
    data_file = None
    name = fields.get("datafile")
    if name is not None:
        if name.startswith("LIST") or "%" in name or " " in name:
            return _DataLayout(None, offset, "", None)  # several data files: not checked
        data_file = path.parent / name  # an absolute name replaces the folder
        offset = 0
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "").lower(), "")
    known = type_bytes is not None and sizes and skip >= 0 and line_skip == 0
    return _DataLayout(data_file, offset, encoding if known else "",
                       math.prod(sizes) * type_bytes if known else None, skip)


_META_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                    "MET_DOUBLE": 8}


def _meta_header(path: Path) -> Optional[_DataLayout]:
    """The data layout of a MetaImage header (.mha or .mhd); None when it cannot be parsed."""
    fields = {}
    with open(path, "rb") as stream:
        for _ in range(200):
            line = stream.readline(HEADER_LINE_MAX)
            if not line:
                return None
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        else:
            return None
        offset = stream.tell()
    try:
        sizes = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except ValueError:
        return None
    type_bytes = _META_TYPE_BYTES.get(fields.get("ElementType", "").replace("_ARRAY", ""))
    name = fields.get("ElementDataFile", "")
    data_file = None
    if name != "LOCAL":
        if not name or name.startswith("LIST") or "%" in name:
            return _DataLayout(None, offset, "", None)
        data_file = path.parent / name  # an absolute name replaces the folder
        offset = 0
    compressed = fields.get("CompressedData", "False").lower() == "true"
    known = type_bytes is not None and sizes and header_size >= 0
    expected = math.prod(sizes) * channels * type_bytes if known else None
    if compressed:
        return _DataLayout(data_file, offset, "zlib" if known else "", expected)
    return _DataLayout(data_file, offset + (header_size if known else 0), "raw" if known else "", expected)


def _check_data(path: Path, layout: _DataLayout) -> None:
    """Compare the data bytes found (decompressed) with the bytes the header announces."""
    if not layout.encoding or layout.expected is None:
        return
    data_path = layout.data_file or path
    if not data_path.is_file():
        raise InvalidInputError(f"{path}: its data file {data_path} is missing; copy it beside the header")
    if layout.encoding == "raw":
        size = data_path.stat().st_size - layout.offset
    else:
        size = _inflated_size(data_path, layout.offset, layout.encoding)
    if size - layout.skip < layout.expected:
        raise _truncated(path, max(0, size - layout.skip), layout.expected,
                         "" if layout.encoding == "raw" else "decompressed ")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


def _inflated_size(path: Path, offset: int, encoding: str, consume: Optional[Callable[[bytes], None]] = None) -> int:
    """Decompressed size of the stream at `offset` (each piece given to `consume`); refuses a damaged stream."""
    total = 0
    try:
        with open(path, "rb") as raw:
            raw.seek(offset)
            if encoding == "zlib":
                chunks = _zlib_chunks(raw)
            else:
                opened = gzip.GzipFile(fileobj=raw, mode="rb") if encoding == "gzip" else bz2.BZ2File(raw)
                chunks = iter(lambda: opened.read(INFLATE_CHUNK), b"")
            for chunk in chunks:
                if consume is not None:
                    consume(chunk)
                total += len(chunk)
    except EOFError:
        raise InvalidInputError(
            f"{path}: the file is truncated (its compressed data stops before the end of the stream); "
            "copy the complete file again") from None
    except (zlib.error, OSError) as error:  # gzip.BadGzipFile and bz2's errors are OSErrors
        raise InvalidInputError(
            f"{path}: the file is corrupt (its compressed data does not decompress: {error}); "
            "copy the file again from its source") from None
    return total


def _zlib_chunks(raw):
    """The decompressed pieces of a zlib stream (MetaImage's CompressedData); EOFError when it stops early."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, detected
    while not inflater.eof:
        data = inflater.unconsumed_tail or raw.read(INFLATE_CHUNK)
        if not data:
            raise EOFError
        yield inflater.decompress(data, INFLATE_CHUNK)


def _truncated(path: Path, found: int, expected: int, kind: str) -> InvalidInputError:
    return InvalidInputError(
        f"{path}: the file is truncated: it holds {found} {kind}bytes of voxel data where its header "
        f"announces {expected}; copy the complete file again")
