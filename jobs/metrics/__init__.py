"""The figures people alert on and look at, read from PostgreSQL when asked:

- `figures`: the aggregate statements that read the cluster's figures
- `collector`: the cluster's Prometheus metrics for `GET /metrics`
- `summary`: the same figures as JSON for `GET /api/metrics/summary/`, through the
  caller's teams

The scheduler's and the node agents' own process metrics are `jobs.scheduling.metrics`
and `jobs.agent.metrics`.
"""
