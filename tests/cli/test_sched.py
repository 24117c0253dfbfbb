"""The real `sched` executable against a live platform: exit codes, --json, the token
kept out of every output."""

import json
import re
import stat
import subprocess
import time

import pytest

from schedcli.output import parse_time
from tests.cli.conftest import PASSWORD, SCHED, sched, sched_json
from tests.processes import free_port, wait_until

# The django_db mark has the test database made (the platform fixture commits to it); the
# tests themselves only run `sched`.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def job(platform, job_id: int) -> dict:
    return sched_json(platform, "show", str(job_id))


def wait_status(platform, job_id: int, status: str, timeout: float = 30) -> dict:
    return wait_until(
        lambda: (found := job(platform, job_id))["status"] == status and found,
        timeout,
        interval=0.2,
        message=f"job {job_id} {status}",
    )


def node_a(platform) -> dict:
    return next(n for n in sched_json(platform, "nodes") if n["name"] == "node-a")


def test_login_stores_the_token_in_a_file_only_its_owner_may_read(platform):
    path = platform.config_home / "sched" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["profiles"]["default"]["url"] == platform.url
    # The stored token is the one commands use.
    assert sched(platform, "queue").returncode == 0


def test_a_wrong_password_exits_1_with_the_apis_message_and_stores_nothing(platform, tmp_path):
    result = sched(
        platform,
        "login",
        f"--url={platform.url}",
        "--username=alice",
        "--password=not-" + PASSWORD,
        env={"XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "Unable to log in with the given username and password." in result.stderr
    assert not (tmp_path / "sched" / "config.json").exists()


def test_submit_wait_exits_with_the_jobs_exit_code(platform):
    assert sched(platform, "submit", "--wait", "--", "true").returncode == 0
    failed = sched(platform, "submit", "--wait", "--", "sh", "-c", "exit 7")
    assert failed.returncode == 7, failed.stderr
    assert re.search(r"job \d+ failed \(exit code 7\)", failed.stdout)


def test_a_waited_job_that_ends_without_an_exit_code_exits_3(platform):
    result = sched(platform, "submit", "--wait", "--timeout=1", "--", "sleep", "30")
    assert result.returncode == 3, result.stdout + result.stderr


def test_parsable_prints_only_the_id(platform):
    result = sched(platform, "submit", "--parsable", "--name=parsed", "--", "true")
    assert result.returncode == 0
    assert re.fullmatch(r"\d+\n", result.stdout)
    shown = job(platform, int(result.stdout))
    assert shown["name"] == "parsed" and shown["command"] == ["true"]


def test_submit_sends_every_option_as_the_apis_fields(platform):
    upstream = int(sched(platform, "submit", "--parsable", "--", "true").stdout)
    submitted = sched_json(
        platform,
        "submit",
        "--name=full",
        "--cpus=0.5",
        "--mem=1G",
        "--gpus=0",
        "--priority=5",
        "--retries=2",
        "--timeout=10m",
        "--cpu-time=2m",
        "--env=GREETING=hi there",
        "--select=zone=a",
        f"--after={upstream}:any",
        "--",
        "sh",
        "-c",
        "echo $GREETING",
    )
    assert submitted["resources"] == {"cpu": 0.5, "memory_mb": 1024, "gpu": 0}
    assert submitted["priority"] == 5 and submitted["max_retries"] == 2
    assert submitted["timeout_seconds"] == 600 and submitted["node_selector"] == {"zone": "a"}
    assert submitted["cpu_time_limit_seconds"] == 120
    assert submitted["depends_on"] == [{"job": upstream, "on": "finished"}]
    wait_status(platform, submitted["id"], "succeeded")
    assert sched(platform, "logs", str(submitted["id"])).stdout == "hi there\n"

    array = sched_json(platform, "submit", "--array=0-3%2", "--", "true")
    assert array["array"] == {"count": 4, "parallelism": 2}

    gang = sched_json(platform, "submit", "--tasks=2", "--preemptible", "--", "true")
    assert (gang["tasks"], gang["preemptible"]) == (2, True)
    single = sched_json(platform, "submit", "--not-preemptible", "--", "true")
    assert (single["tasks"], single["preemptible"]) == (1, False)


def test_queue_json_parses_and_matches_the_api(platform):
    ids = [
        int(
            sched(
                platform, "submit", "--parsable", "--name=parked", "--select=zone=b", "--", "true"
            ).stdout
        )
        for _ in range(3)
    ]
    # Until the scheduler has looked at them all, their reason moves.
    wait_until(
        lambda: all(job(platform, i)["pending_reason"] == "node_selector" for i in ids),
        30,
        message="the reasons",
    )
    listed = sched_json(platform, "queue", "-t", "pending", "--name=parked")
    with platform.http() as http:
        answer = http.get("jobs/", params={"status": "pending", "name": "parked"}).json()
    assert listed == answer["results"]
    assert [j["id"] for j in listed] == sorted(ids, reverse=True)

    table = sched(platform, "queue", "--name=parked")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "TEAM", "QUEUE", "STATE", "TIME", "NODE(REASON)"]
    assert [row.split() for row in rows] == [
        [str(i), "parked", "blue", "default", "pending", "0:00", "(node_selector)"]
        for i in sorted(ids, reverse=True)
    ]
    assert sched_json(platform, "queue", "--mine", "--name=parked") == listed

    why = sched(platform, "why", str(ids[0]))
    assert why.returncode == 0 and "lacks label zone=b" in why.stdout
    assert re.search(r"^queue\s+default: \d+ of \d+$", why.stdout, re.MULTILINE), why.stdout
    assert sched_json(platform, "why", str(ids[0]))["reason"] == "node_selector"

    cancelled = sched_json(platform, "cancel", "--name=parked", "--state=pending")
    assert sorted(j["id"] for j in cancelled) == sorted(ids)
    assert sched_json(platform, "queue", "--name=parked") == []


def test_logs_follow_prints_lines_as_they_appear_and_exits_when_the_job_ends(platform):
    # Two seconds apart: the follower's own start on a busy machine must not outlast the job.
    script = 'for i in 1 2 3 4 5; do echo "line $i $(date +%s.%N)"; sleep 2; done'
    job_id = sched(platform, "submit", "--parsable", "--", "sh", "-c", script).stdout.strip()
    follower = subprocess.Popen(
        [SCHED, "logs", "-f", job_id],
        env=platform.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    received = []
    for line in follower.stdout:
        received.append((line.rstrip("\n"), time.time()))
    assert follower.wait(timeout=30) == 0, follower.stderr.read()
    ended = time.time()
    printed = [(text.split()[:2], float(text.split()[2])) for text, _ in received]
    assert [words for words, _ in printed] == [["line", str(i)] for i in range(1, 6)]
    # The first line came while the job was still printing; the command ended with it.
    assert received[0][1] < printed[-1][1]
    finished = job(platform, int(job_id))
    assert finished["status"] == "succeeded"
    assert ended - printed[-1][1] < 10
    assert platform.token not in "".join(text for text, _ in received)


def test_cancel_of_a_running_job_frees_its_node(platform):
    job_id = sched(platform, "submit", "--parsable", "--cpus=2", "--", "sleep", "60").stdout
    job_id = int(job_id)
    wait_status(platform, job_id, "running")
    assert node_a(platform)["allocated"]["cpu"] == 2
    result = sched(platform, "cancel", str(job_id))
    assert result.returncode == 0, result.stderr
    assert f"job {job_id}:" in result.stdout
    wait_status(platform, job_id, "cancelled", timeout=15)
    wait_until(lambda: node_a(platform)["allocated"]["cpu"] == 0, 15, message="node-a freed")
    # The whole node is there for the next job.
    assert sched(platform, "submit", "--wait", "--cpus=2", "--", "true").returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "--cpuz=2", "--", "true"],
        ["submit", "--array=5-9", "--", "true"],
        ["submit", "--mem=lots", "--", "true"],
        ["submit", "--after=12:maybe", "--", "true"],
        ["submit"],
        ["queue", "-t", "sleeping"],
        ["show", "twelve"],
        ["cancel"],
        ["frobnicate"],
    ],
    ids=" ".join,
)
def test_a_bad_flag_exits_2_with_a_usage_message(platform, args):
    result = sched(platform, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Usage: sched" in result.stderr and "Error:" in result.stderr


def test_an_unknown_job_exits_1_with_the_apis_message(platform):
    with platform.http() as http:
        message = http.get("jobs/99999999/").json()["detail"]
    result = sched(platform, "show", "99999999")
    assert result.returncode == 1
    assert message in result.stderr
    as_json = sched(platform, "show", "99999999", "--json")
    assert as_json.returncode == 1 and as_json.stdout == ""
    assert json.loads(as_json.stderr)["detail"] == {"detail": message}
    for command in (["cancel", "99999999"], ["logs", "99999999"], ["why", "99999999"]):
        assert sched(platform, *command).returncode == 1, command


def test_a_refused_submission_exits_1_with_the_field_messages(platform):
    result = sched(platform, "submit", "--cpus=64", "--", "true")
    assert result.returncode == 1
    assert "resources: Requests 64 CPU, but the largest node has 2 CPU." in result.stderr
    assert sched(platform, "queue", "-t", "all", "--json").returncode == 0


def test_a_bad_token_exits_1_and_is_never_printed(platform):
    bad = "abcdef.0123456789abcdef0123456789"
    platform.secrets.append(bad)
    try:
        env = {"SCHED_URL": platform.url, "SCHED_TOKEN": bad}
        for args in (["queue"], ["queue", "--json"], ["show", "1", "--json"]):
            result = sched(platform, *args, env=env)
            assert result.returncode == 1, result.stderr
    finally:
        platform.secrets.remove(bad)


def test_a_stopped_server_exits_4(platform):
    port = free_port()
    web = platform.cluster.start_web(port)
    env = {"SCHED_URL": f"http://127.0.0.1:{port}", "SCHED_TOKEN": platform.token}
    assert sched(platform, "queue", env=env).returncode == 0
    web.stop()
    result = sched(platform, "queue", env=env)
    assert result.returncode == 4
    assert "cannot reach" in result.stderr
    as_json = sched(platform, "submit", "--json", "--", "true", env=env)
    assert as_json.returncode == 4 and json.loads(as_json.stderr)["exit_code"] == 4


def test_history_lists_finished_jobs_with_their_exit_codes(platform):
    job_id = int(
        sched(platform, "submit", "--parsable", "--name=hist", "--", "sh", "-c", "exit 5").stdout
    )
    wait_status(platform, job_id, "failed")
    listed = sched_json(platform, "history", "--name=hist", "--since=1h")
    assert [(j["id"], j["status"], j["exit_code"]) for j in listed] == [(job_id, "failed", 5)]
    table = sched(platform, "history", "--name=hist").stdout.splitlines()
    assert table[0].split() == [
        "ID",
        "NAME",
        "TEAM",
        "QUEUE",
        "STATE",
        "EXIT",
        "ELAPSED",
        "NODE",
        "END",
    ]
    assert table[1].split()[:8][:7] == [
        str(job_id),
        "hist",
        "blue",
        "default",
        "failed",
        "5",
        table[1].split()[6],
    ]
    assert "node-a" in table[1]
    assert sched_json(platform, "history", "--name=hist", "--since=2999-01-01") == []

    retried = sched_json(platform, "retry", str(job_id))
    assert retried[0]["status"] in ("pending", "reserved", "running", "failed")
    wait_status(platform, job_id, "failed")
    assert job(platform, job_id)["attempts"] == 2
    assert sched(platform, "retry", str(job_id), "999999").returncode == 1


def test_definitions_schedules_and_workflows(platform, tmp_path):
    with platform.http() as http:
        definition = http.post(
            "definitions/", json={"name": "greet", "command": ["sh", "-c", "echo $WHO"]}
        ).json()
        schedule = http.post(
            "schedules/",
            json={"name": "hourly", "definition": definition["id"], "interval_seconds": 3600},
        ).json()
    submitted = sched_json(platform, "submit", "--definition=greet", "--env=WHO=cli", "--wait")
    assert submitted["definition"] == definition["id"] and submitted["status"] == "succeeded"
    assert sched(platform, "logs", str(submitted["id"])).stdout == "cli\n"
    assert sched(platform, "submit", "--definition=nope", "--", "true").returncode == 2
    assert sched(platform, "submit", "--definition=nope").returncode == 1

    listed = sched_json(platform, "schedules")
    assert [s["id"] for s in listed] == [schedule["id"]]
    assert sched_json(platform, "schedules", "pause", str(schedule["id"]))["enabled"] is False
    assert sched_json(platform, "schedules", "resume", str(schedule["id"]))["enabled"] is True
    assert (
        len(
            sched_json(platform, "schedules", "next", str(schedule["id"]), "--count=3")["next_runs"]
        )
        == 3
    )

    path = tmp_path / "flow.yaml"
    path.write_text(
        "name: flow\n"
        "parameters: {day: monday}\n"
        "steps:\n"
        "  - name: first\n"
        "    job: {command: [echo, '{{ params.day }}']}\n"
        "  - name: second\n"
        "    job: {command: ['true']}\n"
        "    depends_on: [first]\n"
    )
    created = sched_json(platform, "workflow", "submit", str(path), "--param=day=tuesday")
    assert created["parameters"] == {"day": "tuesday"}
    assert [s["name"] for s in created["steps"]] == ["first", "second"]
    first = next(s["job"] for s in created["steps"] if s["name"] == "first")
    wait_status(platform, first, "succeeded")
    assert sched(platform, "logs", str(first)).stdout == "tuesday\n"
    path.write_text("steps: [{name: a, depends_on: [b], job: {command: ['true']}}]\nname: bad\n")
    refused = sched(platform, "workflow", "submit", str(path))
    assert refused.returncode == 1 and "steps" in refused.stderr


def test_shell_completion_comes_from_click(platform):
    result = sched(platform, env={"_SCHED_COMPLETE": "bash_source"})
    assert result.returncode == 0 and "_sched_completion" in result.stdout
    words = subprocess.run(
        [SCHED],
        env={
            **platform.env,
            "_SCHED_COMPLETE": "bash_complete",
            "COMP_WORDS": "sched qu",
            "COMP_CWORD": "1",
        },
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert "queue" in words


def test_logout_revokes_the_profiles_token_and_forgets_it(platform):
    login = sched(
        platform,
        "--profile=second",
        "login",
        f"--url={platform.url}",
        "--username=alice",
        f"--password={PASSWORD}",
    )
    assert login.returncode == 0, login.stderr
    path = platform.config_home / "sched" / "config.json"
    token = json.loads(path.read_text())["profiles"]["second"]["token"]
    platform.secrets.append(token)
    try:
        assert sched(platform, "--profile=second", "queue").returncode == 0
        assert sched(platform, "--profile=second", "logout").returncode == 0
        assert "second" not in json.loads(path.read_text())["profiles"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        revoked = {"SCHED_URL": platform.url, "SCHED_TOKEN": token}
        assert sched(platform, "queue", env=revoked).returncode == 1
        # With no stored profile nor environment, there is no server: a usage error.
        assert sched(platform, "--profile=second", "queue").returncode == 2
    finally:
        platform.secrets.remove(token)
    # The default profile is untouched.
    assert sched(platform, "queue").returncode == 0


def test_hold_and_release(platform):
    # No node has zone=z: the job stays pending, for the hold to find it so.
    submitted = sched(platform, "submit", "--parsable", "--select", "zone=z", "--", "true")
    job_id = int(submitted.stdout)
    held = sched(platform, "hold", str(job_id))
    assert (held.returncode, held.stdout) == (0, f"job {job_id}: held\n")
    assert job(platform, job_id)["pending_reason"] == "held"
    again = sched(platform, "hold", str(job_id), "999999")
    assert again.returncode == 1
    assert again.stderr.splitlines()[:2] == [
        f"error: job {job_id}: the server refused (400)",
        "  status: The job is already held.",
    ]
    released = sched(platform, "release", str(job_id))
    assert released.stdout == f"job {job_id}: released; pending (waiting for the scheduler)\n"
    wait_until(
        lambda: job(platform, job_id)["pending_reason"] == "node_selector",
        30,
        interval=0.2,
        message="the scheduler to look at it again",
    )
    sched(platform, "cancel", str(job_id))
    # Submitted held, it waits so from the start.
    held_id = int(sched(platform, "submit", "--parsable", "--hold", "--", "true").stdout)
    assert job(platform, held_id)["pending_reason"] == "held"
    sched(platform, "release", str(held_id))
    wait_status(platform, held_id, "succeeded")
    refused = sched(platform, "submit", "--definition=nothing", "--hold")
    assert refused.returncode == 2 and "(--hold)" in refused.stderr
    # An array is held and released whole.
    array_id = int(
        sched(platform, "submit", "--parsable", "--hold", "--array", "0-2", "--", "true").stdout
    )
    assert job(platform, array_id)["held_at"] is not None
    released = sched(platform, "release", str(array_id))
    assert released.stdout == f"job {array_id}: released; running\n"
    wait_status(platform, array_id, "succeeded")


def test_update_changes_a_pending_job_and_reports_refusals_per_job(platform):
    # No node has zone=z: the job waits, until its selector is dropped.
    job_id = int(sched(platform, "submit", "--parsable", "--select", "zone=z", "--", "true").stdout)
    wait_until(
        lambda: job(platform, job_id)["pending_reason"] == "node_selector",
        30,
        interval=0.2,
        message="the scheduler to look at it",
    )
    held_id = int(sched(platform, "submit", "--parsable", "--hold", "--", "true").stdout)
    changed = sched(
        platform,
        "update",
        str(held_id),
        "--priority=7",
        "--cpus=0.5",
        "--mem=64M",
        "--timeout=2m",
        "--cpu-time=90",
    )
    assert (changed.returncode, changed.stdout) == (0, f"job {held_id}: changed; pending (held)\n")
    shown = job(platform, held_id)
    assert (shown["priority"], shown["resources"], shown["timeout_seconds"]) == (
        7,
        {"cpu": 0.5, "memory_mb": 64, "gpu": 0},
        120,
    )
    assert shown["cpu_time_limit_seconds"] == 90
    finished = int(sched(platform, "submit", "--parsable", "--wait", "--", "true").stdout)
    both = sched(platform, "update", str(job_id), str(finished), "--any-node")
    assert both.returncode == 1
    assert both.stdout == f"job {job_id}: changed; pending (waiting for the scheduler)\n"
    assert both.stderr.splitlines()[:2] == [
        f"error: job {finished}: the server refused (400)",
        "  status: Only a pending job can be changed; this one is succeeded.",
    ]
    wait_status(platform, job_id, "succeeded")
    sched(platform, "cancel", str(held_id))
    nothing = sched(platform, "update", str(job_id))
    assert nothing.returncode == 2 and "Say what to change" in nothing.stderr


def test_report_sums_what_the_teams_jobs_used(platform):
    def running() -> list:
        return sched_json(platform, "queue", "-t", "running,reserved")

    def usage() -> dict:
        return sched_json(platform, "report", "--by=team,user", "--since=1d")

    wait_until(lambda: not running(), 60, interval=0.2, message="no job running")
    before = usage()
    submitted = sched(
        platform, "submit", "--parsable", "--wait", "--cpus=0.5", "--mem=512M", "--", "sleep", "1"
    )
    assert not running()
    after = usage()
    with platform.http() as http:
        query = {"by": "team,user", "since": after["since"]}
        assert after == http.get("usage/report/", params=query).json()
        [attempt] = http.get(f"jobs/{int(submitted.stdout)}/executions/").json()

    # The job's one attempt, its run times its 0.5 CPU and 0.5 GiB, and nothing else.
    ran = parse_time(attempt["finished_at"]) - parse_time(attempt["started_at"])
    hours = ran.total_seconds() / 3600
    assert 1 / 3600 <= hours < 30 / 3600
    [was], [now] = before["rows"] or [dict.fromkeys(after["rows"][0], 0)], after["rows"]
    assert (now["team"], now["user"]) == ("blue", "alice")
    assert now["attempts"] - was["attempts"] == 1
    assert now["succeeded"] - was["succeeded"] == 1
    assert now["cpu_hours"] - was["cpu_hours"] == pytest.approx(hours / 2, abs=3e-6)
    assert now["memory_gb_hours"] - was["memory_gb_hours"] == pytest.approx(hours / 2, abs=3e-6)

    table = sched(platform, "report", "--by=user,day", "--since=1d").stdout.splitlines()
    assert table[0].startswith("Usage from ")
    assert table[1].split() == [
        "USER", "DAY", "ATTEMPTS", "OK", "RUN_H", "CPU_H", "MEM_GB_H", "GPU_H"
    ]  # fmt: skip
    assert table[2].split()[0] == "alice"
    for bad in (["--by=colour"], ["--since=lots"]):
        refused = sched(platform, "report", *bad)
        assert refused.returncode == 2 and "Invalid value" in refused.stderr
    refused = sched(platform, "report", "--queue=nope")
    assert refused.returncode == 1 and 'queue: No queue "nope".' in refused.stderr


def test_workflows_are_listed_shown_cancelled_retried_and_run_from_templates(platform):
    with platform.http() as http:
        template = http.post(
            "workflow-templates/",
            json={
                "name": "nightly",
                "parameters": {"seconds": 60},
                "steps": [
                    {"name": "wait", "job": {"command": ["sleep", "{{ params.seconds }}"]}},
                    {"name": "after", "job": {"command": ["true"]}, "depends_on": ["wait"]},
                ],
            },
        ).json()
    listed = sched(platform, "workflow", "templates").stdout.splitlines()
    assert listed[0].split() == ["ID", "NAME", "TEAM", "STEPS", "PARAMETERS"]
    assert listed[1].split() == [str(template["id"]), "nightly", "blue", "2", "seconds=60"]

    run = sched(platform, "workflow", "run", "nightly", "--param=seconds=30", "--name=tonight")
    assert run.returncode == 0, run.stderr
    headline, header, wait, after = run.stdout.splitlines()
    flow_id = int(re.fullmatch(r"Submitted workflow (\d+) tonight", headline)[1])
    assert header.split() == ["STEP", "JOB", "AFTER", "STATE", "TIME"]
    assert wait.split()[0] == "wait" and after.split()[:3] == ["after", after.split()[1], "wait"]
    with platform.http() as http:
        assert http.get(f"workflows/{flow_id}/").json()["parameters"] == {"seconds": 30}
    wait_job = int(wait.split()[1])
    wait_status(platform, wait_job, "running")

    shown = sched_json(platform, "workflow", "show", str(flow_id))
    with platform.http() as http:
        assert shown == http.get(f"workflows/{flow_id}/").json()
    assert [s["status"] for s in shown["steps"]] == ["running", "pending"]
    fields = sched(platform, "workflow", "show", str(flow_id)).stdout.splitlines()
    assert fields[:4] == [
        f"id            {flow_id}",
        "name          tonight",
        "team          blue",
        "state         running",
    ]
    assert fields[8].split() == ["STEP", "JOB", "AFTER", "STATE", "TIME"]
    assert fields[10].split()[:5] == [
        "after",
        str(after.split()[1]),
        "wait",
        "pending",
        "(waiting_dependencies)",
    ]

    running = sched_json(platform, "workflow", "list", "--state=running")
    assert [f["id"] for f in running] == [flow_id]
    assert sched_json(platform, "workflow", "list", "--state=succeeded", "--name=tonight") == []

    cancelled = sched(platform, "workflow", "cancel", str(flow_id), "999999")
    assert cancelled.returncode == 1
    assert cancelled.stdout == f"workflow {flow_id}: cancelled\n"
    assert cancelled.stderr.splitlines()[0] == "error: workflow 999999: the server refused (404)"
    wait_status(platform, wait_job, "cancelled")
    again = sched(platform, "workflow", "cancel", str(flow_id))
    assert again.returncode == 1 and f"workflow {flow_id}: the server refused (400)" in again.stderr

    retried = sched_json(platform, "workflow", "retry", str(flow_id))
    assert [f["status"] for f in retried] == ["running"]
    wait_status(platform, wait_job, "running")
    sched(platform, "workflow", "cancel", str(flow_id))
    wait_status(platform, wait_job, "cancelled")
    every = sched_json(platform, "workflow", "list", "--all")
    with platform.http() as http:
        assert every == http.get("workflows/", params={"page_size": 500}).json()["results"]
    assert flow_id in [f["id"] for f in every]
    table = sched(platform, "workflow", "list", "--limit=1").stdout.splitlines()
    assert table[1].split()[:5] == [str(flow_id), "tonight", "blue", "cancelled", "2"]

    unknown = sched(platform, "workflow", "run", "weekly")
    assert unknown.returncode == 1
    assert unknown.stderr == 'error: No workflow template "weekly".\n'
    refused = sched(platform, "workflow", "run", str(template["id"]), "--param=nope")
    assert refused.returncode == 2 and "--param" in refused.stderr


def test_staff_cordon_drain_and_uncordon_nodes_members_may_not(platform):
    operator = platform.operator_env()
    refused = sched(platform, "cordon", "node-a")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "error: node node-a: the server refused (403)",
        "  You do not have permission to perform this action.",
    ]
    assert node_a(platform)["status"] == "ready"
    try:
        cordoned = sched(platform, "cordon", "node-a", "node-z", env=operator)
        assert cordoned.returncode == 1
        assert cordoned.stdout == "node node-a: cordoned\n"
        assert cordoned.stderr.splitlines()[0] == "error: node node-z: the server refused (404)"
        assert node_a(platform)["status"] == "cordoned"
        # A cordoned node takes no new work...
        job_id = int(sched(platform, "submit", "--parsable", "--", "sleep", "60").stdout)
        wait_until(
            lambda: job(platform, job_id)["pending_reason"] == "insufficient_capacity",
            30,
            interval=0.2,
            message="the job to wait for a node",
        )
        # ...until it is uncordoned.
        uncordoned = sched_json(platform, "uncordon", "node-a", env=operator)
        assert [n["status"] for n in uncordoned] == ["ready"]
        wait_status(platform, job_id, "running")
        # Drained with a job running: draining, then cordoned once the job has ended.
        drained = sched(platform, "drain", "node-a", env=operator)
        assert drained.stdout == (
            "node node-a: draining (cordoned once what runs there has finished)\n"
        )
        sched(platform, "cancel", str(job_id))
        wait_until(
            lambda: node_a(platform)["status"] == "cordoned",
            30,
            interval=0.2,
            message="node-a cordoned once its job ended",
        )
    finally:
        assert sched(platform, "uncordon", "node-a", env=operator).returncode == 0
    assert node_a(platform)["status"] == "ready"
