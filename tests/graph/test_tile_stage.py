from zdask.graph.tile_stage import cleanup_decisions, remove_stale_tile_files


def test_eq_only_run_with_cleanup_requested_keeps_it_off_and_warns():
    decisions, warnings = cleanup_decisions(["EQ", "EQ", "UNKNOWN"], requested=True)
    assert decisions == [False, False, False]
    assert warnings == ["alt-az cleanup requested but no ALT_AZ frames detected: disabled"]


def test_mixed_run_cleans_alt_az_tiles_only():
    decisions, warnings = cleanup_decisions(["EQ", "ALT_AZ", "UNKNOWN", "ALT_AZ"], requested=True)
    assert decisions == [False, True, False, True] and warnings == []


def test_nothing_is_cleaned_unless_requested():
    decisions, warnings = cleanup_decisions(["ALT_AZ", "EQ"], requested=False)
    assert decisions == [False, False] and warnings == []


def test_stale_tile_files_are_removed_and_nothing_else(tmp_path):
    names = ["tile_000.fits", "tile_001.fits", "tile_002.fits", "tile_1234.fits",
             ".tile_003.fits.3fa9c1d2.part",                         # left by a killed run
             "tile_01.fits", "tile_final.fits", "my_tile_002.fits", "tile_002.fits.bak", "notes.txt"]
    for name in names:
        (tmp_path / name).write_text(name)
    (tmp_path / "tile_005.fits").mkdir()  # not a file zdask wrote
    removed = remove_stale_tile_files(str(tmp_path), {"tile_000.fits", "tile_001.fits"})
    assert removed == [".tile_003.fits.3fa9c1d2.part", "tile_002.fits", "tile_1234.fits"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["tile_000.fits", "tile_001.fits", "tile_01.fits", "tile_final.fits", "my_tile_002.fits",
         "tile_002.fits.bak", "notes.txt", "tile_005.fits"])
    assert remove_stale_tile_files(str(tmp_path / "absent"), set()) == []
