"""The memory limit a run may use: `runtime.memory_limit` in bytes."""

import pytest

from af2cpu.errors import ConfigError
from af2cpu.runtime.memory import GIB, parse_memory_limit


def test_memory_limit_accepts_auto_bytes_and_binary_units():
    assert parse_memory_limit("16G") == 16 * GIB
    assert parse_memory_limit("16GB") == 16 * GIB
    assert parse_memory_limit("512MiB") == 512 << 20
    assert parse_memory_limit("1.5T") == 3 << 39
    assert parse_memory_limit("123456") == 123456
    assert parse_memory_limit(4096) == 4096
    assert parse_memory_limit("auto", available=lambda: 7 * GIB) == 7 * GIB
    assert parse_memory_limit(" auto ") > 0  # this machine's available memory


@pytest.mark.parametrize("bad", ["lots", "16X", "-1G", "0", ""])
def test_bad_memory_limit_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="runtime.memory_limit"):
        parse_memory_limit(bad)
