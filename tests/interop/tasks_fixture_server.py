"""A tasks (SEP-2663) server with the fixture tools the conformance suite's tasks scenarios
call (``conformance server --suite extensions``: "targeted runs point at a
SEP-2663-conformant fixture"), for comparing those scenarios direct and through mcplb.

    python -m tests.interop.tasks_fixture_server --name NAME --port PORT

It is py_tasks_server.py's extension (task state in this process only: the reason a
balancer must route ``tasks/*`` to the instance that created the task) with the fixtures
the scenarios name: ``greet`` (sync only: "Hello, {name}!"), and as tasks for a client
that declares the extension ``slow_compute`` (``seconds`` of work, settles ``cancelled``
when cancelled meanwhile), ``failing_job`` (completes with a tool error), ``protocol_error_job``
(fails with a JSON-RPC error) and ``test_tool_with_task``. It is a fixture for comparing
verdicts, not a complete implementation of the extension: scenarios it does not serve fail
the same way direct and through the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types import CallToolRequestParams

from tests.interop.py_tasks_server import POLL_MS, TTL_MS, TasksExtension, _declares_tasks, _now

TASK_TOOLS = frozenset({"slow_compute", "failing_job", "protocol_error_job", "test_tool_with_task"})


class FixtureTasks(TasksExtension):
    async def intercept_tool_call(
        self,
        params: CallToolRequestParams,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:
        if params.name not in TASK_TOOLS or not _declares_tasks(ctx):
            return await call_next(ctx)
        now = _now()
        task: dict[str, Any] = {
            "taskId": f"{self.server_name}-{uuid.uuid4()}",
            "status": "working",
            "createdAt": now,
            "lastUpdatedAt": now,
            "ttlMs": TTL_MS,
            "pollIntervalMs": POLL_MS,
        }
        self.tasks[task["taskId"]] = task
        job = asyncio.create_task(self._work(task, params.name, params.arguments or {}))
        self.running.add(job)
        job.add_done_callback(self.running.discard)
        return {"resultType": "task", **task}

    async def _work(self, task: dict[str, Any], tool: str, arguments: dict[str, Any]) -> None:
        if tool == "slow_compute":
            await asyncio.sleep(min(float(arguments.get("seconds", 1)), 30.0))
            outcome: dict[str, Any] = {"result": _text(f"computed by {self.server_name}")}
        elif tool == "failing_job":
            await asyncio.sleep(0.2)
            outcome = {"result": {**_text("the job failed"), "isError": True}}
        elif tool == "protocol_error_job":
            outcome = {"error": {"code": -32603, "message": "internal error in the job"}}
        else:
            outcome = {"result": _text(f"task done by {self.server_name}")}
        if task["status"] == "working":  # not cancelled meanwhile
            task["status"] = "failed" if "error" in outcome else "completed"
            task["lastUpdatedAt"] = _now()
            task.update(outcome)


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def build(name: str) -> MCPServer:
    server: MCPServer = MCPServer(name, log_level="WARNING", extensions=[FixtureTasks(name)])

    @server.tool()
    def greet(name: str) -> str:
        """Sync only."""
        return f"Hello, {name}!"

    @server.tool()
    async def slow_compute(seconds: float = 1.0) -> str:
        """A task for clients that declare the extension."""
        await asyncio.sleep(min(seconds, 30.0))
        return "computed"

    @server.tool()
    def failing_job() -> str:
        """A task that completes with a tool error."""
        raise ValueError("the job failed")

    @server.tool()
    def protocol_error_job() -> str:
        """A task that fails with a protocol error."""
        raise RuntimeError("internal error in the job")

    @server.tool()
    def test_tool_with_task() -> str:
        """A task that completes at once."""
        return "done"

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = build(args.name)
    print(f"tasks fixture {args.name} on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.run("streamable-http", host="127.0.0.1", port=args.port, stateless_http=True)


if __name__ == "__main__":
    main()
