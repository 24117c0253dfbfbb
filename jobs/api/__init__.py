"""The jobs' REST API, one module per concern:

- `specs`: the input serializers of a job's spec (inline, from a definition, a definition)
- `representation`: how a job is written as JSON, declared once for the list and the schema
- `jobs`: `/api/jobs/`
- `definitions`: `/api/definitions/`
- `schedules`: `/api/schedules/`
- `allocations`: `/api/allocations/` (releasing one ends its attempt, a jobs service)
- `metrics`: `/api/metrics/summary/`, and `/metrics` for Prometheus (a plain Django view)
"""
