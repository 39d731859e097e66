import datetime
import os

from mlops_assets.lakehouse.landing import complete_landing_days

DAY = datetime.date(2026, 3, 1)


def land(root, day, name="t.csv", manifest=False):
    folder = root / "transactions" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("transaction_id\n1\n")
    if manifest:
        (root / "_manifests").mkdir(exist_ok=True)
        (root / "_manifests" / f"{day.isoformat()}.json").write_text("{}")
    return folder / name


def test_a_day_with_its_manifest_is_complete_before_it_ends(tmp_path):
    land(tmp_path, DAY, manifest=True)
    land(tmp_path, DAY + datetime.timedelta(days=1))
    noon = datetime.datetime.combine(DAY, datetime.time(12), datetime.UTC)
    assert complete_landing_days(tmp_path, noon) == [DAY]


def test_a_day_without_manifest_is_complete_once_ended_and_quiet(tmp_path):
    written = land(tmp_path, DAY)
    ended = datetime.datetime.combine(
        DAY + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )
    stamp = (ended - datetime.timedelta(hours=1)).timestamp()
    os.utime(written, (stamp, stamp))
    # Ended, but not yet quiet for 30 minutes after the end of the day.
    assert complete_landing_days(tmp_path, ended + datetime.timedelta(minutes=10)) == []
    assert complete_landing_days(tmp_path, ended + datetime.timedelta(minutes=31)) == [DAY]


def test_a_file_that_still_changes_keeps_an_ended_day_open(tmp_path):
    written = land(tmp_path, DAY)
    later = datetime.datetime.combine(
        DAY + datetime.timedelta(days=2), datetime.time(), datetime.UTC
    )
    touched = (later - datetime.timedelta(minutes=5)).timestamp()
    os.utime(written, (touched, touched))
    assert complete_landing_days(tmp_path, later) == []
    assert complete_landing_days(tmp_path, later + datetime.timedelta(minutes=30)) == [DAY]


def test_folders_that_are_not_days_are_ignored(tmp_path):
    (tmp_path / "transactions" / "tmp").mkdir(parents=True)
    land(tmp_path, DAY, manifest=True)
    assert complete_landing_days(tmp_path, datetime.datetime(2026, 3, 9, tzinfo=datetime.UTC)) == [
        DAY
    ]
