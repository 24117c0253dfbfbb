"""`sched`: the command-line client of the scheduler, over its REST API only.

It imports nothing of the server (an import-linter contract in pyproject.toml holds
that), so it installs and runs on any machine that can reach the API."""
