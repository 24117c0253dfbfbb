"""`python -m jobs.agent.callable_runner DOTTED.NAME`: runs one allow-listed callable.

Started by the node agent in the job's own process, like a command, so a callable gets
the same process group, limits, log and timeout. Its keyword arguments are the job's
parameters (JSON in JOB_PARAMETERS); a return value other than None is printed as JSON.
"""

import importlib
import json
import os
import sys


def main(dotted: str) -> int:
    module_name, _, attribute = dotted.rpartition(".")
    target = getattr(importlib.import_module(module_name), attribute)
    result = target(**json.loads(os.environ.get("JOB_PARAMETERS") or "{}"))
    if result is not None:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
