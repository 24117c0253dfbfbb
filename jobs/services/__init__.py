"""Writes for jobs, one module per concern:

- `specs`: what a job spec may hold, and whether it could ever run for a team
- `submission`: accepting a job (idempotent per team and key)
- `definitions`: named, reusable specs and the jobs made from them
- `publishing`: sending executions' messages, never before their rows commit
- `executions`: claim and finish, on the node that runs them
- `retries`: the retry policy, and what a job becomes after each attempt
- `actions`: cancel, requeue, acknowledge, release a stuck allocation
- `failover`: executions of lost nodes, vanished processes and lost messages

The SQL these share with the scheduling cycle is `jobs.accounting`'s.
"""
