"""read_rows: a band of a frame's rows, the bytes zarr returns, decompressing only what it needs."""

import os

import numpy as np
import pytest
import zarr

from zdask.io import store
from zdask.io.chunkrows import read_rows


def _frame(tmp_path, shape=(300, 200, 3), rows=128):
    rng = np.random.default_rng(2)
    image = (np.round(400 + 20 * rng.standard_normal(shape)) / 4).astype(np.float32)
    group = store.open_store(str(tmp_path / "work.zarr"))
    arr = store.create_array(group, "frames/f", shape, "float32", (rows,) + shape[1:],
                             compressor=store.FRAME_COMPRESSOR)
    arr[:] = image
    return zarr.open_array(str(tmp_path / "work.zarr"), path="frames/f", mode="r"), image


def test_bands_are_the_stored_values_across_chunks_and_at_the_partial_edge(tmp_path):
    z, image = _frame(tmp_path)
    for y0, y1 in [(0, 1), (5, 40), (120, 140), (100, 300), (250, 300), (0, 300)]:
        band = read_rows(z, y0, y1)
        assert band.dtype == np.float32 and band.flags.c_contiguous
        np.testing.assert_array_equal(band, image[y0:y1])


def test_a_band_decompresses_only_its_blosc_blocks(tmp_path):
    # Spoil the last Blosc block of the first chunk (its rows 120-127): a band of rows 0-20 is
    # still read right, because only the blocks that hold it are decompressed (through zarr, the
    # whole chunk would be, and the spoilt block fails it).
    z, image = _frame(tmp_path)
    path = os.path.join(str(z.store.root), z.store_path.path, z.metadata.encode_chunk_key((0, 0, 0)))
    data = bytearray(open(path, "rb").read())
    data[-200:] = bytes(200)
    with open(path, "wb") as f:
        f.write(bytes(data))
    np.testing.assert_array_equal(read_rows(z, 0, 20), image[0:20])
    try:
        whole = z[0:128]
    except Exception:
        return
    assert not np.array_equal(whole, image[0:128])


def test_a_chunk_never_written_reads_as_the_fill_value(tmp_path):
    group = store.open_store(str(tmp_path / "work.zarr"))
    arr = store.create_array(group, "frames/g", (200, 50, 3), "float32", (64, 50, 3),
                             compressor=store.FRAME_COMPRESSOR)
    arr[:64] = 1.0
    band = read_rows(arr, 60, 70)
    assert (band[:4] == 1.0).all() and np.isnan(band[4:]).all()


def test_a_band_read_into_a_buffer_is_a_view_of_it_and_a_short_buffer_is_refused(tmp_path):
    z, image = _frame(tmp_path)
    buffer = np.full(200 * 200 * 3 * 4, 255, dtype=np.uint8)
    for y0, y1 in [(5, 40), (120, 140), (100, 300)]:
        band = read_rows(z, y0, y1, buffer)
        assert np.shares_memory(band, buffer) and band.shape == (y1 - y0, 200, 3)
        np.testing.assert_array_equal(band, image[y0:y1])
    with pytest.raises(ValueError, match="cannot hold rows 0:201"):
        read_rows(z, 0, 201, buffer)


def test_write_rows_writes_the_chunk_files_zarr_writes(tmp_path):
    """Same bytes in every chunk file as zarr's own write (partial last chunk padded with the
    fill value; a chunk that is all fill value not written at all), and zarr reads them back."""
    from zdask.io.chunkrows import write_rows

    rng = np.random.default_rng(5)
    image = (np.round(400 + 20 * rng.standard_normal((300, 200, 3))) / 4).astype(np.float32)
    image[128:256] = np.nan  # the second chunk holds only the fill value
    group = store.open_store(str(tmp_path / "work.zarr"))
    made = {}
    for name in ("by_zarr", "by_us"):
        made[name] = store.create_array(group, name, image.shape, "float32", (128, 200, 3),
                                        compressor=store.FRAME_COMPRESSOR)
    made["by_zarr"][:] = image
    write_rows(made["by_us"], image)

    def chunk_files(name):
        folder = tmp_path / "work.zarr" / name
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
                and p.name != "zarr.json"}

    ours = chunk_files("by_us")
    assert ours == chunk_files("by_zarr") and len(ours) == 2  # chunks 0 and 2; chunk 1 is fill
    back = zarr.open_array(str(tmp_path / "work.zarr"), path="by_us", mode="r")
    np.testing.assert_array_equal(back[:], image)
    with pytest.raises(ValueError):
        write_rows(made["by_us"], image[:10])
