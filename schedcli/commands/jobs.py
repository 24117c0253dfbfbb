"""Jobs: queue, show, why, history, logs, cancel, retry, hold, release (submit and update
have modules of their own)."""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import click

from .. import specs
from ..app import act_on_each, action_command, json_option, with_api
from ..client import Api
from ..output import (
    elapsed,
    emit_json,
    parse_time,
    print_fields,
    print_table,
    short_time,
)

STATUSES = ("pending", "reserved", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("pending", "reserved", "running")
FINISHED = ("succeeded", "failed", "cancelled")
# Slurm's short state names, for fingers used to squeue -t.
SLURM_STATES = {
    "PD": "pending",
    "R": "running",
    "CD": "succeeded",
    "F": "failed",
    "CA": "cancelled",
}
MAX_PAGE = 500


def parse_states(text: str, option: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if not text:
        return default
    if text == "all":
        return STATUSES
    states = []
    for item in text.split(","):
        state = SLURM_STATES.get(item.strip().upper(), item.strip().lower())
        if state not in STATUSES:
            raise click.BadParameter(
                f"{item!r} is not one of {', '.join(STATUSES)} (or all)", param_hint=option
            )
        states.append(state)
    return tuple(dict.fromkeys(states))


def job_list(api: Api, *, states, limit: int, all_pages: bool, **filters) -> list[dict]:
    """Jobs in any of `states`, newest first, as the API writes them. The API filters one
    status at a time, each page one index range; the states' pages are fetched at once
    and merged here."""
    if not states:
        return []
    page_size = MAX_PAGE if all_pages else limit
    if set(states) == set(STATUSES):
        queries = [{**filters, "page_size": page_size}]
    else:
        queries = [{**filters, "status": state, "page_size": page_size} for state in states]

    def fetch(params: dict) -> list[dict]:
        if all_pages:
            return list(api.pages("jobs/", **params))
        return api.get("jobs/", **params)["results"]

    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        jobs = [job for found in pool.map(fetch, queries) for job in found]
    jobs.sort(key=lambda job: (parse_time(job["created_at"]), job["id"]), reverse=True)
    return jobs if all_pages else jobs[:limit]


def node_or_reason(job: dict) -> str:
    if job["status"] == "pending":
        return f"({job['pending_reason'] or 'waiting_scheduler'})"
    return job["node"] or ""


def run_time(job: dict) -> str:
    if job["status"] in ("pending", "reserved"):
        return "0:00"
    return elapsed(job["started_at"], job["finished_at"])


def list_options(command):
    for option in reversed(
        [
            click.option("--team", help="Only this team's jobs (a slug)."),
            click.option("--queue", "queue_name", help="Only jobs in this queue."),
            click.option("--name", help="Only jobs with this name."),
            click.option("--node", help="Only jobs whose latest attempt ran on this node."),
            click.option("--mine", is_flag=True, help="Only jobs you submitted."),
            click.option(
                "--limit",
                type=click.IntRange(1, MAX_PAGE),
                default=50,
                show_default=True,
                help="The newest this many.",
            ),
            click.option("--all", "all_pages", is_flag=True, help="Every page, not the first."),
        ]
    ):
        command = option(command)
    return command


def list_filters(team, queue_name, name, node, mine) -> dict:
    filters = {"team": team, "queue": queue_name, "name": name, "node": node}
    if mine:
        filters["mine"] = "true"
    return {key: value for key, value in filters.items() if value is not None}


@click.command()
@click.option(
    "-t",
    "--states",
    help="Comma-separated: pending, reserved, running, succeeded, failed, cancelled, or all "
    "(Slurm's PD, R, CD, F, CA too). Default: pending,reserved,running.",
)
@list_options
@json_option
@with_api
def queue(api, states, team, queue_name, name, node, mine, limit, all_pages, as_json):
    """Jobs waiting or running, newest first (like squeue)."""
    jobs = job_list(
        api,
        states=parse_states(states, "--states", ACTIVE),
        limit=limit,
        all_pages=all_pages,
        **list_filters(team, queue_name, name, node, mine),
    )
    if as_json:
        emit_json(jobs)
        return
    print_table(
        ["ID", "NAME", "TEAM", "QUEUE", "STATE", "TIME", "NODE(REASON)"],
        [
            [
                str(job["id"]),
                job["name"],
                job["team"],
                job["queue"],
                job["status"],
                run_time(job),
                node_or_reason(job),
            ]
            for job in jobs
        ],
    )


def since_time(text: str | None) -> str | None:
    """--since 2h, 3d, 2030-01-01 or 2030-01-01T12:00:00+00:00, as an ISO time."""
    if not text:
        return None
    if text[-1] in "smhd" and text[:-1].isdecimal():
        seconds = specs.seconds(text, "--since")
        return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use e.g. 2h, 3d, 2030-01-01 or an ISO time", param_hint="--since"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # the local time zone, as a person means it
    return when.isoformat()


@click.command()
@click.option(
    "-t", "--states", help="Comma-separated: succeeded, failed, cancelled. Default: all three."
)
@click.option("--since", help="Submitted since: 2h, 3d, 2030-01-01 or an ISO time.")
@list_options
@json_option
@with_api
def history(api, states, since, team, queue_name, name, node, mine, limit, all_pages, as_json):
    """Finished jobs with their state, exit code, elapsed time and node (like sacct)."""
    filters = list_filters(team, queue_name, name, node, mine)
    if since:
        filters["created_after"] = since_time(since)
    jobs = job_list(
        api,
        states=parse_states(states, "--states", FINISHED),
        limit=limit,
        all_pages=all_pages,
        **filters,
    )
    if as_json:
        emit_json(jobs)
        return
    print_table(
        ["ID", "NAME", "TEAM", "QUEUE", "STATE", "EXIT", "ELAPSED", "NODE", "END"],
        [
            [
                str(job["id"]),
                job["name"],
                job["team"],
                job["queue"],
                job["status"],
                "" if job["exit_code"] is None else str(job["exit_code"]),
                elapsed(job["started_at"], job["finished_at"]) if job["started_at"] else "",
                job["node"] or "",
                short_time(job["finished_at"]),
            ]
            for job in jobs
        ],
    )


def describe_command(job: dict) -> str:
    return " ".join(job["command"]) if job["kind"] == "command" else job["callable"]


@click.command()
@click.argument("job_id", type=int)
@json_option
@with_api
def show(api, job_id, as_json):
    """One job: its state, node, attempts, exit code and output tail."""
    job = api.get(f"jobs/{job_id}/")
    if as_json:
        emit_json(job)
        return
    resources = job["resources"]
    print_fields(
        [
            ("id", job["id"]),
            ("name", job["name"]),
            ("team", job["team"]),
            ("queue", job["queue"]),
            ("state", job["status"]),
            ("reason", job["pending_reason"] or job["cancel_reason"]),
            ("command", describe_command(job)),
            (
                "resources",
                f"{resources['cpu']} CPU, {resources['memory_mb']} MB, {resources['gpu']} GPU",
            ),
            ("priority", job["priority"]),
            ("node", job["node"]),
            ("attempts", f"{job['attempts']} (retries allowed: {job['max_retries']})"),
            ("exit code", job["exit_code"]),
            ("error", job["error"]),
            ("submitted", short_time(job["created_at"])),
            ("started", short_time(job["started_at"])),
            ("finished", short_time(job["finished_at"])),
            ("depends on", ", ".join(f"{d['job']}:{d['on']}" for d in job["depends_on"])),
        ]
    )
    if job["output_tail"]:
        click.echo("output tail:")
        click.echo(job["output_tail"].rstrip("\n"))


@click.command()
@click.argument("job_id", type=int)
@json_option
@with_api
def why(api, job_id, as_json):
    """Why a job waits: its reason, its place in its queue, what each node lacks."""
    answer = api.get(f"jobs/{job_id}/why/")
    if as_json:
        emit_json(answer)
        return
    click.echo(answer["summary"])
    if not answer.get("pending"):
        return
    pairs = [("reason", answer["reason"])]
    if answer.get("not_before"):
        pairs.append(("not before", short_time(answer["not_before"])))
    if answer.get("retry"):
        retry = answer["retry"]
        pairs.append(("retry", f"attempt {retry['attempt']} at {short_time(retry['due_at'])}"))
    if answer.get("queue"):
        queue_ = answer["queue"]
        line = f"{queue_['name']}: {queue_['position']} of {queue_['team_pending']}"
        if queue_["teams"] > 1:
            line += f" of its team's; {queue_['pending']} of {queue_['teams']} teams in all"
        pairs.append(("queue", line))
    print_fields(pairs)
    if answer.get("nodes"):
        print_table(
            ["VERDICT", "DETAIL", "COUNT", "NODES"],
            [
                [group["verdict"], group["detail"], str(group["count"]), ",".join(group["nodes"])]
                for group in answer["nodes"]
            ],
        )


def wait_for_attempt(api: Api, job_id: int) -> None:
    """Until the job has an attempt to follow, or has ended without one."""
    pause = 0.2
    while True:
        job = api.get(f"jobs/{job_id}/")
        if job["attempts"] or job["status"] in FINISHED:
            return
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)


@click.command()
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Print new output as it comes, until it ends.")
@click.option("--attempt", type=click.IntRange(min=1), help="The attempt; default the latest.")
@json_option
@with_api
def logs(api, job_id, follow, attempt, as_json):
    """A job's output (like `nomad alloc logs`); with -f, followed while it runs."""
    params = {}
    if attempt is not None:
        params["attempt"] = attempt
    if follow:
        # A job still waiting has nothing to follow yet: wait for its first attempt.
        if attempt is None:
            wait_for_attempt(api, job_id)
        params["follow"] = "true"
    with api.stream_text(f"jobs/{job_id}/logs/", **params) as pieces:
        if as_json and follow:
            write_json_lines(job_id, pieces)
        elif as_json:
            emit_json({"job": job_id, "attempt": attempt, "text": "".join(pieces)})
        else:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()


def write_json_lines(job_id: int, pieces) -> None:
    """Followed output as JSON lines, one object per line of the log, as each is complete."""
    pending = ""
    for piece in pieces:
        pending += piece
        *lines, pending = pending.split("\n")
        for line in lines:
            sys.stdout.write(json.dumps({"job": job_id, "line": line}) + "\n")
        sys.stdout.flush()
    if pending:
        sys.stdout.write(json.dumps({"job": job_id, "line": pending}) + "\n")


def act_on_jobs(
    api: Api, ids: list[int], action: str, *, as_json: bool, change: dict | None = None
) -> None:
    """POST jobs/ID/<action>/ for each (with `change`, PATCH jobs/ID/ with it); the
    refusals are reported per job, and make the command exit 1 after the others were
    done."""

    def act(job_id: int) -> dict:
        if change is None:
            return api.post(f"jobs/{job_id}/{action}/")
        return api.patch(f"jobs/{job_id}/", json=change)

    act_on_each(
        ids, act, noun="job", describe=lambda job: describe_outcome(job, action), as_json=as_json
    )


def describe_outcome(job: dict, action: str) -> str:
    if action == "cancel" and job["status"] in ("reserved", "running"):
        return f"cancel requested; stopping on {job['node']}"
    if action == "hold":
        return "held"
    if action in ("release", "update"):
        past = {"release": "released", "update": "changed"}[action]
        if job["status"] != "pending":  # an array job, released whole
            return f"{past}; {job['status']}"
        return f"{past}; pending ({job['pending_reason'] or 'waiting for the scheduler'})"
    return job["status"]


@click.command()
@click.argument("job_ids", type=int, nargs=-1)
@click.option("--name", help="Cancel the jobs with this name.")
@click.option(
    "--state",
    help="Cancel the jobs in these states (comma-separated; with --name, default all "
    "unfinished ones).",
)
@click.option("--team", help="With --name or --state: only this team's jobs.")
@click.option("--queue", "queue_name", help="With --name or --state: only this queue's jobs.")
@click.option("--mine", is_flag=True, help="With --name or --state: only jobs you submitted.")
@json_option
@with_api
def cancel(api, job_ids, name, state, team, queue_name, mine, as_json):
    """Cancel jobs (like scancel): by id, or every job matching --name and --state."""
    selecting = name is not None or state is not None
    if job_ids and selecting:
        raise click.UsageError("Give job ids, or --name/--state, not both.")
    if not job_ids and not selecting:
        raise click.UsageError("Give job ids, or --name/--state to select jobs.")
    if (team or queue_name or mine) and not selecting:
        raise click.UsageError("--team, --queue and --mine select jobs with --name or --state.")
    ids = list(job_ids)
    if selecting:
        states = parse_states(state, "--state", ACTIVE)
        unfinished = [s for s in states if s not in FINISHED]
        filters = list_filters(team, queue_name, name, None, mine)
        jobs = job_list(api, states=unfinished, limit=MAX_PAGE, all_pages=True, **filters)
        ids = [job["id"] for job in jobs]
        if not ids and not as_json:
            click.echo("No unfinished job matches.")
    act_on_jobs(api, ids, "cancel", as_json=as_json)


def job_action_command(action: str, help: str) -> click.Command:
    return action_command(
        action,
        help,
        noun="job",
        id_type=int,
        path=lambda job_id: f"jobs/{job_id}/{action}/",
        describe=lambda job: describe_outcome(job, action),
    )


retry = job_action_command("retry", "Requeue failed or cancelled jobs as their next attempt.")
hold = job_action_command(
    "hold", "Keep pending jobs from starting until released (like scontrol hold)."
)
release = job_action_command("release", "Let held jobs start again (like scontrol release).")
