"""The disk checksum: sha256 over each 1 MiB block's sha256, equal however the content is split into
data and holes, recomputed from a sparse file on disk, and changed by any flipped byte (holes included)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.backup.catalog import Entry
from bot.backup.digest import BLOCK, KIND, PLAIN, BlockHasher, checksum, file_digest
from bot.backup.files import Store
from bot.backup.verify import check_files


def reference(content: bytes) -> str:
    """The definition, written the slow and obvious way."""
    blocks = [content[i : i + BLOCK] for i in range(0, len(content), BLOCK)]
    return hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).hexdigest()


# A piece is data (its bytes, made from a seed and a length) or a hole (a length of zeros).
PIECES = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=0, max_value=3 * BLOCK), st.integers(0, 255)), max_size=6
)


def feed(pieces: list[tuple[bool, int, int]]) -> tuple[BlockHasher, bytes]:
    hasher, content = BlockHasher(), bytearray()
    for is_data, length, seed in pieces:
        if is_data:
            chunk = bytes([seed]) * length if seed else bytes(length)  # data may be zeros too
            hasher.data(chunk)
            content += chunk
        else:
            hasher.hole(length)
            content += bytes(length)
    return hasher, bytes(content)


@settings(max_examples=60, deadline=None)
@given(PIECES)
def test_any_split_into_data_and_holes_gives_the_defined_digest(pieces: list[tuple[bool, int, int]]) -> None:
    hasher, content = feed(pieces)
    assert hasher.hexdigest() == reference(content)


def test_an_empty_file_and_a_partial_last_block() -> None:
    assert BlockHasher().hexdigest() == hashlib.sha256(b"").hexdigest()
    hasher = BlockHasher()
    hasher.hole(BLOCK + 3)
    hasher.data(b"xy")
    assert hasher.hexdigest() == reference(bytes(BLOCK + 3) + b"xy")


def sparse_file(path: Path) -> bytes:
    """4 MiB: a hole, data straddling a block boundary, a hole, data, a trailing hole."""
    content = bytearray(4 * BLOCK)
    content[BLOCK - 10 : BLOCK + 5000] = b"\x07" * 5010
    content[3 * BLOCK + 1 : 3 * BLOCK + 9] = b"backup!!"
    with open(path, "wb") as f:
        for start, end in ((BLOCK - 10, BLOCK + 5000), (3 * BLOCK + 1, 3 * BLOCK + 9)):
            f.seek(start)
            f.write(content[start:end])
        f.truncate(len(content))
    return bytes(content)


def test_a_sparse_file_on_disk_hashes_like_its_logical_content(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    content = sparse_file(path)
    assert file_digest(path) == checksum(path, KIND) == reference(content)
    dense = tmp_path / "dense.img"
    dense.write_bytes(content)  # the same bytes, no holes: the same digest
    assert file_digest(dense) == file_digest(path)
    assert checksum(path, PLAIN) == hashlib.sha256(content).hexdigest() != file_digest(path)


def test_a_byte_flipped_inside_a_hole_changes_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    sparse_file(path)
    before = file_digest(path)
    with open(path, "r+b") as f:
        f.seek(2 * BLOCK + 123)  # inside the middle hole
        f.write(b"\x01")
    assert file_digest(path) != before


def test_an_unknown_checksum_kind_fails_verify_instead_of_passing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown checksum"):
        checksum(tmp_path, "md5")
    store = Store(tmp_path / "store")
    writer = store.writer()
    writer.add("a.img", b"abc", "disk")
    writer.commit({})
    files = [{"name": "a.img", "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest(), "checksum": "md5"}]
    entry = Entry(writer.id, "disk", "lab", "u", "vm", "t", 3, "good", "crash", False, files=files)
    assert check_files(store, entry) == ["a.img names a checksum vmbot does not know"]
    files[0]["checksum"] = PLAIN  # the same file under the kind it was made with: good
    assert check_files(store, entry) == []
