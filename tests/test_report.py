"""The report renderers (minscale/report.py): tables, number formats and the study schema."""
import pytest

from minscale import report


def test_format_table_hand_worked():
    text = report.format_table(["a", "bb"], [["x", "1"], ["yy", "22"]], indent=0)
    assert text.splitlines() == ["a   bb", "--  --", "x    1", "yy  22"]
    with pytest.raises(ValueError, match="rows\\[0\\]"):
        report.format_table(["a"], [["x", "y"]])


def test_number_bytes_and_seconds_formats():
    assert report.format_number(0.123456) == "0.1235"
    assert report.format_bytes(5764) == "5,764"
    assert (report.format_seconds(0.000123), report.format_seconds(0.0456),
            report.format_seconds(2.5)) == ("123 us", "45.6 ms", "2.5 s")
    assert report.format_seconds(None) == report.format_number(None) == "-"


def test_format_interval_prints_the_half_width():
    assert report.format_interval(0.030123, [0.029, 0.031246]) == "0.03012 ± 0.0011"
    assert report.format_interval(0.5, [None, None]) == "0.5"
    assert report.format_interval(0.5, None) == "0.5"
    assert report.format_interval(None, [0.1, 0.2]) == "-"


def test_schema_rejects_what_it_should():
    jsonschema = pytest.importorskip("jsonschema")
    schema = report.load_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema_version": 1}, schema)  # required parts missing
