"""parse_size / format_size: the forms people write and the mistakes they make."""

from __future__ import annotations

import pytest

from mlxstore import parse_size
from mlxstore.sizes import format_size


@pytest.mark.parametrize(
    "text, expected",
    [
        (0, 0), (4096, 4096), (8e9, 8_000_000_000), ("0", 0), ("4096", 4096), ("12B", 12),
        ("8GB", 8 * 10**9), ("8 GB", 8 * 10**9), ("8gb", 8 * 10**9), (" 8 Gb ", 8 * 10**9),
        ("512MiB", 512 << 20), ("512mib", 512 << 20), ("1.5G", 3 << 29), ("1.5GiB", 3 << 29),
        ("2K", 2048), ("2KB", 2000), ("2kib", 2048), ("1T", 1 << 40), ("1TB", 10**12),
        ("1P", 1 << 50), ("0.5M", 1 << 19), (".5K", 512), ("1.", 1), ("1_000", 1000),
        ("1.3KiB", 1331), ("100 MB", 10**8),
    ],
)  # fmt: skip
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "not a number"), ("GB", "not a number"), ("-1GB", "negative"), ("-1", "negative"), ("abc", "not a number"), ("8 gigs", "unknown unit 'gigs'"), ("1e9", "exponents are not read"),
        ("8 XB", "unknown unit 'XB'"), ("8GiBs", "unknown unit"), ("1.2.3G", "not a number"),
        ("nan", "not a number"), ("inf", "not a number"), ("8 G B", "not a number"),
        (-1, "negative"), (float("inf"), "finite"), (float("nan"), "finite"),
    ],
)  # fmt: skip
def test_parse_size_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_size(bad)


@pytest.mark.parametrize("bad", [None, True, [1], b"8GB"])
def test_parse_size_types(bad):
    with pytest.raises(TypeError, match="int or a string"):
        parse_size(bad)


@pytest.mark.parametrize(
    "n, text",
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (8 << 30, "8 GiB"),
     (10**9, "954 MiB"), (int(1.234 * 2**40), "1.23 TiB"), (15 << 20, "15 MiB"),
     (int(15.25 * 2**20), "15.2 MiB"), (5 << 60, "5120 PiB"), (-2048, "-2 KiB")],
)  # fmt: skip
def test_format_size(n, text):
    assert format_size(n) == text


def test_format_then_parse_is_close():
    for n in (1, 999, 4096, 123456789, 7 << 33):
        assert abs(parse_size(format_size(n).replace(" ", "")) - n) <= n * 0.01


@pytest.mark.parametrize(
    "typed, unit, shown",
    [("8GB", "GB", "0.13 GB"), ("8 GiB", "GiB", "0.12 GiB"), ("8000MB", "MB", "123.46 MB"),
     ("8G", "G", "0.12 G"), ("4096", "", "123456789 bytes"), (4096, "", "123456789 bytes")],
)  # fmt: skip
def test_minimum_in_the_unit_typed(typed, unit, shown):
    from mlxstore.sizes import format_in, unit_of

    assert unit_of(typed) == unit
    assert format_in(123_456_789, unit) == shown
    assert parse_size(shown.replace(" bytes", "")) >= 123_456_789  # rounded up: still a minimum
