"""The node agent: everything that runs on a node, in the `run_node` process.

- `client`: its only way to the control plane, the web API with the node's key: keep-alive,
  sent again with back-off while the server cannot answer
- `supervision`: which node this process is, the host's capacity, the loop that
  heartbeats (with what the jobs use), applies cancels and watches memory, and the
  clean-up of what a previous agent left running
- `guard`: the process that kills the agent's jobs when the agent dies
- `runner`: running one execution in its own process group, with its limits and log
- `sampling`: what /proc says about the jobs' processes: CPU time and resident memory
- `metrics`: this process's own metrics (`run_node --metrics-port`)
- `success_batching`: ending successes in batches, and taking work onto the room they free
- `log_shipping`: sending the jobs' output to the control plane while they run
- `tasks`: the Celery task that claims and runs an execution
- `callable_runner`: the child process that runs an allow-listed callable

Nothing in the control plane imports this package (an import-linter contract says so).
"""
