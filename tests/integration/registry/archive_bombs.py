"""Crafted ``.tar.gz`` pieces for the archive limit tests: gzip members, which readers join, that
are tiny but unpack to as much as a test asks for."""

from __future__ import annotations

import gzip
import tarfile

MIB = 1 << 20
ZEROS_MIB_GZ = gzip.compress(b"\0" * MIB, compresslevel=9)  # about 1 KiB


def tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A gzip member holding the tar header of an entry of ``size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return gzip.compress(info.tobuf(tarfile.USTAR_FORMAT))


def zeros_member(name: str, size_mib: int) -> bytes:
    """A tar entry of ``size_mib`` MiB of zeros, about 1 KiB per MiB."""
    return tar_header(name, size_mib * MIB) + ZEROS_MIB_GZ * size_mib


def end_blocks() -> bytes:
    """The end-of-archive blocks, as a gzip member."""
    return gzip.compress(b"\0" * tarfile.RECORDSIZE)
