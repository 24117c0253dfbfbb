"""Hollow nodes' key file, their reading of `parameters.hollow_seconds`, and their broker
consumers (the nodes themselves run as processes in tests/e2e/test_hollow_nodes.py)."""

import threading

import pytest

from jobs.agent.hollow import (
    NODES_PER_CONNECTION,
    HollowFleet,
    HollowKeysError,
    _Consumer,
    hollow_node_names,
    hollow_seconds,
    read_hollow_keys,
)


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


def test_a_consumer_that_fails_stops_them_all_and_its_error_is_raised(broker, monkeypatch):
    """Three broker connections' worth of nodes; the second connection's consumer fails
    (not by losing its connection): consume() does not go on with a third of the nodes
    deaf, it stops every consumer and raises the error, so run_node exits."""
    names = hollow_node_names("deaf", 2 * NODES_PER_CONNECTION + 1)
    failing = f"hollow-consumer-{names[NODES_PER_CONNECTION]}"
    consume = _Consumer._consume

    def failing_consume(self):
        if self.name == failing:
            raise RuntimeError("consumer broke")
        consume(self)

    monkeypatch.setattr(_Consumer, "_consume", failing_consume)
    fleet = HollowFleet(keys=dict.fromkeys(names, "key"), base_url="http://127.0.0.1:9", threads=2)
    raised = []

    def run():
        try:
            fleet.consume()
        except RuntimeError as exc:
            raised.append(str(exc))

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(15)
    went_on = runner.is_alive()
    fleet.stop_consuming()
    runner.join(5)
    fleet.stop()
    assert not went_on, "consume() went on after a consumer failed"
    assert raised == ["consumer broke"]
