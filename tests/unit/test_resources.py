"""Writes that would not fit are refused before they start: one line with the bytes needed and free."""

from __future__ import annotations

import shutil
import struct
import zipfile

import pandas as pd
import pytest

from chestxray.data import synthetic
from chestxray.data.cache import prepare_cache
from chestxray.data.sources import extract_zip, ingest_local
from chestxray.errors import UserError
from chestxray.resources import free_bytes, human, require_free_space


def test_sizes_read_as_people_write_them():
    assert [human(n) for n in (512, 1536, 74_000_000_000, 6.9e12)] == ["512 B", "1.5 KB", "74.0 GB", "6.9 TB"]


def test_free_space_of_a_path_not_made_yet_is_its_disks(tmp_path):
    assert free_bytes(tmp_path / "a" / "b") == shutil.disk_usage(tmp_path).free


def test_a_write_larger_than_the_disk_is_refused_in_one_line(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    require_free_space(tmp_path, 1000, "a small file", "free space")
    with pytest.raises(UserError) as error:
        require_free_space(tmp_path / "cache", free * 2, "the cache", "lower data.image_size or free space")
    needed, _, rest = str(error.value).partition(" but ")
    assert needed == f"{tmp_path / 'cache'}: the cache needs {human(free * 2)}"
    assert rest.endswith(" is free on its disk; lower data.image_size or free space")  # free moves a little


def test_prepare_refuses_a_cache_that_cannot_fit_before_writing(tmp_path):
    """The reported case: data.image_size=100000 mapped a ~7 TB cache and died under a memory limit."""
    split = tmp_path / "split.csv"
    pd.DataFrame(
        {"path": ["a.png", "b.png", "c.png"], "label": ["COVID", "Normal", "Normal"], "split": ["train", "val", "test"]}
    ).to_csv(split, index=False)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"cache: the cache at data.image_size=2000000 needs 12.0 TB but .* is free"):
        prepare_cache(split, cache, 2_000_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split.csv"]  # nothing written, no temp left


def test_an_archive_that_would_fill_the_disk_is_not_extracted(tmp_path):
    """A zip bomb's central directory claims far more than its bytes; zipfile stops at the claimed
    size and checks the CRC, so the claims bound what extracts, and they are what is compared."""
    archive, dest = tmp_path / "bomb.zip", tmp_path / "raw"
    claimed = 0xFFFF_FFFF  # 4.3 GB, the most one zip32 member can claim
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(shutil.disk_usage(tmp_path).free // claimed + 1):
            zf.writestr(f"COVID/images/COVID-{i}.png", b"\0" * 1000)
    data, at = bytearray(archive.read_bytes()), 0
    while (at := data.find(b"PK\x01\x02", at + 1)) >= 0:  # central directory: uncompressed size at +24
        data[at + 24 : at + 28] = struct.pack("<I", claimed)
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"raw: extracting .*bomb.zip needs .* but .* is free on its disk; free space"):
        extract_zip(archive, dest)
    assert not dest.exists()


def test_a_copy_or_a_synthetic_dataset_that_cannot_fit_is_refused_before_it_starts(tiny_disk, raw_dataset):
    """On a real 64 KB disk: a local folder of several MB, and 40 synthetic images (~2.5 MB)."""
    disk = tiny_disk("64k")
    with pytest.raises(UserError, match=r"disk/raw: a copy of .* needs .* MB but .* KB is free on its disk"):
        ingest_local(raw_dataset, disk / "raw")
    with pytest.raises(
        UserError, match=r"disk/raw: generating 40 synthetic images needs 2.6 MB but .* KB is free on its disk"
    ):
        synthetic.generate(disk / "raw", 40, seed=0)
    assert list(disk.iterdir()) == []
