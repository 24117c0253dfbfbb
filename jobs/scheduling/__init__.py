"""The scheduler: where pending jobs go.

- `cycle`: one scheduling cycle, placing pending jobs on ready nodes in one transaction
- `freed_room`: a node's finish placing waiting jobs on the room it freed
- `leader`: the `run_scheduler` process, one leader at a time, woken by NOTIFY
- `metrics`: that process's own metrics (`run_scheduler --metrics-port`)

The rules themselves (predicates, scoring, fair share) are `resources.placement`'s.
"""
