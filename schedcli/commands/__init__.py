"""The commands of `sched`, one module per kind of object."""
