"""sched's option parsers and writers as plain functions: what each option becomes in
the API's fields, and how the API's errors are shown."""

import click
import pytest

from schedcli import specs
from schedcli.commands.jobs import parse_states
from schedcli.commands.submit import waited_exit_code
from schedcli.output import duration, field_messages


@pytest.mark.parametrize(
    ("text", "megabytes"), [("512", 512), ("512M", 512), ("2G", 2048), ("1.5g", 1536)]
)
def test_memory_reads_megabytes_and_gigabytes(text, megabytes):
    assert specs.memory_mb(text) == megabytes


@pytest.mark.parametrize("text", ["lots", "2X", "-1G", ""])
def test_memory_refuses_what_it_cannot_read(text):
    with pytest.raises(click.BadParameter):
        specs.memory_mb(text)


def test_durations_take_units():
    assert [specs.seconds(t, "--timeout") for t in ("90", "90s", "10m", "2h", "1d")] == [
        90,
        90,
        600,
        7200,
        86400,
    ]
    with pytest.raises(click.BadParameter):
        specs.seconds("ten", "--timeout")


def test_after_takes_slurm_words_and_the_apis():
    assert specs.dependencies(("12", "13:any,14:notok", "15:start", "16:finished")) == [
        {"job": 12, "on": "succeeded"},
        {"job": 13, "on": "finished"},
        {"job": 14, "on": "failed"},
        {"job": 15, "on": "started"},
        {"job": 16, "on": "finished"},
    ]
    for bad in ("x", "12:maybe", "12:"):
        with pytest.raises(click.BadParameter):
            specs.dependencies((bad,))


def test_an_array_range_is_a_count_and_a_parallelism():
    assert specs.array("0-99%10") == {"count": 100, "parallelism": 10}
    assert specs.array("0-3") == {"count": 4}
    for bad in ("5-9", "1,3,5", "0-", "%4"):
        with pytest.raises(click.BadParameter):
            specs.array(bad)


def test_params_read_json_values_and_text():
    assert specs.key_values(
        ("n=5", "on=true", "day=monday", "list=[1]"), "--param", typed=True
    ) == {
        "n": 5,
        "on": True,
        "day": "monday",
        "list": [1],
    }
    assert specs.key_values(("A=1=2",), "--env") == {"A": "1=2"}
    with pytest.raises(click.BadParameter):
        specs.key_values(("novalue",), "--env")


def test_states_take_slurms_short_names():
    default = ("pending",)
    assert parse_states("", "-t", default) == default
    assert parse_states("PD,r,failed", "-t", default) == ("pending", "running", "failed")
    assert len(parse_states("all", "-t", default)) == 6
    with pytest.raises(click.BadParameter):
        parse_states("sleeping", "-t", default)


@pytest.mark.parametrize(
    ("status", "exit_code", "expected"),
    [
        ("succeeded", 0, 0),
        ("failed", 7, 7),
        ("failed", 255, 255),
        ("failed", -9, 3),  # killed by a signal
        ("failed", None, 3),  # lost with its node, timed out before an exit
        ("failed", 0, 3),
        ("cancelled", -15, 3),
        ("cancelled", None, 3),
    ],
)
def test_a_waited_job_exits_with_its_code_or_3(status, exit_code, expected):
    assert waited_exit_code({"status": status, "exit_code": exit_code}) == expected


def test_field_messages_name_nested_fields():
    detail = {
        "resources": {"cpu": ["Too many."]},
        "depends_on": [{}, {"job": ["No such job."]}],
        "non_field_errors": ["Bad."],
        "detail": "Not found.",
    }
    assert field_messages(detail) == [
        "resources.cpu: Too many.",
        "depends_on[1].job: No such job.",
        "Bad.",
        "Not found.",
    ]


def test_durations_read_like_squeue():
    assert [duration(s) for s in (5, 65, 3600 + 61, 86400 * 2 + 5)] == [
        "0:05",
        "1:05",
        "1:01:01",
        "2-00:00:05",
    ]
