from zdask.graph.tile_stage import cleanup_decisions


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
