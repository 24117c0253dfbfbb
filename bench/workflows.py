"""Workflows: creating a 1,000-step fan-out/fan-in, and the delay from an upstream's
finish to its dependent's start.

    .venv/bin/python bench/workflows.py [--steps 1000] [--chain 200] [--slots 8]

Sets up its own database (scheduler_bench_workflows) and Redis database (14), starts a
real scheduler and one node agent (--slots threads, one CPU each). Creates a workflow of
one root, --steps - 2 steps after it and one step after all of those, through the API's
serializer and the service (checks, one transaction, bulk inserts), and runs it with
steps that run `true`. Then runs a chain of --chain steps, each after the one before,
where room is always free: the delay from each step's finish to the next one's start is
the release (in the finishing transaction), the scheduler's wake-up, its cycle, the
message and the claim. The fan's own delays are printed too (root finish to its first
dependents' start, last middle finish to the fan-in's start). The last line printed is
one JSON object of the figures.
"""

import argparse
import json
import sys
import time
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import Bench, percentile, stop, wait_for  # noqa: E402

BENCH = Bench("workflows", 14)


def ms(later, earlier) -> float:
    return (later - earlier).total_seconds() * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()

    broker = BENCH.set_up()

    from accounts.models import Role, Team, User
    from accounts.services import team_add_member
    from jobs.api.workflows import WorkflowCreateSerializer
    from jobs.models import Job, Workflow, WorkflowStatus
    from jobs.services.workflows import workflow_create
    from nodes.models import Node

    team = Team.objects.create(name="Bench", slug="bench")
    user = User.objects.create_user("bench")
    team_add_member(team=team, user=user, role=Role.MEMBER)
    manage = [sys.executable, str(ROOT / "manage.py")]
    processes = [
        BENCH.start("scheduler", [*manage, "run_scheduler"]),
        *BENCH.start_node_agent(
            "node",
            [
                *manage,
                "run_node",
                "--name",
                "bench",
                f"--cpu={args.slots}",
                "--memory-mb=65536",
                f"--slots={args.slots}",
                "--loglevel=WARNING",
            ],
        ),
    ]
    job = {"command": ["true"], "resources": {"cpu": 1, "memory_mb": 16}}

    def create(name: str, steps: list[dict]) -> tuple[Workflow, float]:
        """Through the API's serializer and the service, as a POST would go."""
        started = time.perf_counter()
        serializer = WorkflowCreateSerializer(
            data={"name": name, "team": "bench", "steps": steps},
            context={"request": SimpleNamespace(user=user)},
        )
        serializer.is_valid(raise_exception=True)
        workflow = workflow_create(user=user, **serializer.validated_data)
        return workflow, (time.perf_counter() - started) * 1000

    def run(workflow: Workflow, timeout: float) -> dict[str, Job]:
        wait_for(
            lambda: Workflow.objects.get(pk=workflow.pk).status != WorkflowStatus.RUNNING,
            timeout,
            f"workflow {workflow.name}",
            0.1,
        )
        status = Workflow.objects.get(pk=workflow.pk).status
        if status != WorkflowStatus.SUCCEEDED:
            raise SystemExit(f"workflow {workflow.name} ended {status}")
        jobs = Job.objects.filter(workflow=workflow).select_related("workflow_step")
        return {j.workflow_step.name: j for j in jobs}

    try:
        wait_for(lambda: Node.objects.filter(name="bench").exists(), 30, "the node", 0.1)
        time.sleep(3)  # the worker connected and consuming
        run(create("warm-up", [{"name": "a", "job": job}])[0], 60)

        middle = [f"m{i}" for i in range(args.steps - 2)]
        fan = [
            {"name": "root", "job": job},
            *({"name": m, "job": job, "depends_on": ["root"]} for m in middle),
            {"name": "sink", "job": job, "depends_on": middle},
        ]
        workflow, create_ms = create("fan", fan)
        print(f"created a {args.steps}-step fan-out/fan-in workflow in {create_ms:.0f} ms")
        started = time.perf_counter()
        steps = run(workflow, 900)
        run_s = time.perf_counter() - started
        first_wave = sorted(steps[m].started_at for m in middle)[: args.slots]
        fan_out_ms = ms(first_wave[-1], steps["root"].finished_at)
        last_middle = max(steps[m].finished_at for m in middle)
        fan_in_ms = ms(steps["sink"].started_at, last_middle)
        print(
            f"ran it in {run_s:.1f} s on {args.slots} slots; root finish to its first "
            f"{args.slots} dependents started: {fan_out_ms:.1f} ms; last middle step's "
            f"finish to the fan-in's start: {fan_in_ms:.1f} ms"
        )

        names = [f"s{i}" for i in range(args.chain)]
        chain = [
            {"name": n, "job": job, **({"depends_on": [names[i - 1]]} if i else {})}
            for i, n in enumerate(names)
        ]
        steps = run(create("chain", chain)[0], 600)
        delays = [ms(steps[b].started_at, steps[a].finished_at) for a, b in pairwise(names)]
        p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
        print(
            f"upstream finish to dependent start over a chain of {args.chain}: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(delays):.1f} ms"
        )
    finally:
        stop(processes)
        broker.flushdb()
        from django.db import connections

        connections.close_all()
        BENCH.drop_database()
    print(
        json.dumps(
            {
                "create_1000_steps_ms": round(create_ms, 1),
                "dependency_release_p50_ms": round(p50, 1),
                "dependency_release_p99_ms": round(p99, 1),
                "fan_out_first_wave_ms": round(fan_out_ms, 1),
                "fan_in_start_ms": round(fan_in_ms, 1),
                "run_fan_seconds": round(run_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
