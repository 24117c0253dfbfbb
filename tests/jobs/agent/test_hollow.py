"""Hollow nodes' key file and their reading of `parameters.hollow_seconds` (the nodes
themselves run as processes in tests/e2e/test_hollow_nodes.py)."""

import pytest

from jobs.agent.hollow import HollowKeysError, hollow_node_names, hollow_seconds, read_hollow_keys


def key_file(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "keys"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_the_key_file_gives_each_node_its_key(tmp_path):
    path = key_file(tmp_path, "h-1 aa.k1\nh-2 bb.k2\n\nother-1 cc.k3\n")
    assert read_hollow_keys(path, hollow_node_names("h", 2)) == {"h-1": "aa.k1", "h-2": "bb.k2"}


def test_a_key_file_missing_a_node_is_refused_naming_it(tmp_path):
    path = key_file(tmp_path, "h-1 aa.k1\n")
    with pytest.raises(HollowKeysError, match=r"no key for 1 node.*h-2"):
        read_hollow_keys(path, hollow_node_names("h", 2))


def test_a_key_file_others_may_read_is_refused(tmp_path):
    path = key_file(tmp_path, "h-1 aa.k1\n", mode=0o644)
    with pytest.raises(HollowKeysError, match="chmod 600"):
        read_hollow_keys(path, ["h-1"])


def test_a_missing_key_file_is_refused(tmp_path):
    with pytest.raises(HollowKeysError, match="No such file"):
        read_hollow_keys(str(tmp_path / "none"), ["h-1"])


@pytest.mark.parametrize(
    ("parameters", "seconds"),
    [
        ({}, 1.0),
        ({"hollow_seconds": 0}, 0.0),
        ({"hollow_seconds": 2.5}, 2.5),
        ({"hollow_seconds": -1}, None),
        ({"hollow_seconds": "3"}, None),
        ({"hollow_seconds": True}, None),
        ({"hollow_seconds": float("nan")}, None),
    ],
)
def test_hollow_seconds_is_a_duration_or_none(parameters, seconds):
    assert hollow_seconds(parameters) == seconds
