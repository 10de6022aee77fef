"""Counts the module runs per host of a playbook run, for bench/bench.py's "module runs per host".

An aggregate callback: the run's own output is unchanged. At the end it writes
{host: {action: runs}} as JSON to the file named by FASTPG_BENCH_MODULE_RUNS.

A run is a task result that a module on the host produced: a skipped task or loop item runs
none, a loop runs one per item it did not skip, a retry (until) or an async poll is one more.
Actions that the controller answers itself (set_fact, assert, debug, include_*, ...) are not
counted. A task delegated elsewhere counts for the host it runs for.
"""

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: fastpg_module_runs
type: aggregate
short_description: Counts the module runs per host (bench/bench.py)
description:
  - At the end of the run, writes the module runs per host and action as JSON to the file named by
    FASTPG_BENCH_MODULE_RUNS.
"""

# Answered on the controller: no module goes to the host.
CONTROLLER_ACTIONS = {
    "set_fact", "assert", "debug", "meta", "include_tasks", "import_tasks", "include_role", "import_role",
    "include_vars", "fail", "add_host", "group_by", "set_stats", "pause", "validate_argument_spec",
}


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fastpg_module_runs"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.runs = {}

    def _count(self, result, runs=None):
        action = result.task.action.rsplit(".", 1)[-1]
        if action in CONTROLLER_ACTIONS:
            return
        if runs is None:
            items = result.result.get("results")
            if (result.task.loop or result.task.loop_with) and isinstance(items, list):
                runs = sum(1 for item in items if not (isinstance(item, dict) and item.get("skipped")))
            else:
                runs = 1
        per_action = self.runs.setdefault(result.host.get_name(), {})
        per_action[action] = per_action.get(action, 0) + runs

    def v2_runner_on_ok(self, result):
        self._count(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result)

    def v2_runner_retry(self, result):
        self._count(result, 1)

    def v2_runner_on_async_poll(self, result):
        self._count(result, 1)

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("FASTPG_BENCH_MODULE_RUNS")
        if path:
            with open(path, "w", encoding="utf-8") as out:
                json.dump(self.runs, out, indent=1, sort_keys=True)
