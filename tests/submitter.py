"""A job submitter for e2e tests, run as its own process: `python -m tests.submitter`.

Submits `--count` jobs for `--team` through jobs.services.job_submit, the same service
the API calls, into the given queues at random (`--gang-share` of them gangs), with
random pauses, and exits 0 when every job was accepted.
"""

import argparse
import os
import random
import sys
import time


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, help="prefix of job names and idempotency keys")
    parser.add_argument("--team", required=True)
    parser.add_argument("--queue", action="append", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pause", type=float, default=0.1)
    parser.add_argument("--sleep", type=float, default=0.3, help="what each job runs for")
    parser.add_argument("--concurrency-key", default="")
    parser.add_argument(
        "--gang-share", type=float, default=0.0, help="share of jobs that are gangs of 2 or 3"
    )
    parser.add_argument("--priorities", default="0", help="to choose from, e.g. 0,10")
    parser.add_argument("--cpu-millis", type=int, help="every job's CPU (else 500 or 1000)")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from accounts.models import Team
    from jobs.services.submission import job_submit

    team = Team.objects.get(slug=args.team)
    rng = random.Random(args.seed)
    for i in range(args.count):
        gang = rng.random() < args.gang_share
        job_submit(
            team=team,
            spec={
                "name": f"{args.name}-{i}",
                "command": ["sh", "-c", f"sleep {args.sleep}"],
                "cpu_millis": args.cpu_millis or (500 if gang else rng.choice([500, 1000])),
                "memory_mb": 64 if gang else rng.choice([64, 256]),
                "tasks": rng.choice([2, 3]) if gang else 1,
                "gpu": 0,
                "queue": rng.choice(args.queue),
                "idempotency_key": f"{args.name}-{i}",
                "concurrency_key": args.concurrency_key,
                "priority": rng.choice([int(p) for p in args.priorities.split(",")]),
            },
        )
        time.sleep(rng.uniform(0, args.max_pause))
    print(f"submitted {args.count}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
