"""A 2026-07-28 MCP server with the tasks extension (SEP-2663), for the task-routing tests.

    python -m tests.interop.py_tasks_server --name NAME --port PORT

Neither SDK ships a tasks implementation (the Python SDK 2.3 has the extension interface,
``mcp.server.extension``), so this is one written from SEP-2663 on that interface: a
dual-era ``MCPServer`` (tools ``whoami`` and ``slow_task``) whose ``slow_task`` answers a
client that declares the extension with ``resultType: "task"`` (a CreateTaskResult) and runs in the
background; ``tasks/get``, ``tasks/update`` and ``tasks/cancel`` serve the tasks this process
holds, and a task id it does not hold is a JSON-RPC error ("Unknown task"), as another
instance behind a balancer would answer. Task state lives in this process only: the reason
a balancer must route a task's requests to the instance that created it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolRequestParams
from pydantic import BaseModel, ConfigDict

TASKS = "io.modelcontextprotocol/tasks"
TTL_MS = 60_000
POLL_MS = 20


class TaskParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    taskId: str  # the wire name


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class TasksExtension(Extension):
    identifier = TASKS

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        self.tasks: dict[str, dict[str, Any]] = {}
        self.running: set[asyncio.Task[None]] = set()

    def methods(self) -> Sequence[MethodBinding]:
        return (
            MethodBinding("tasks/get", TaskParams, self.get),
            MethodBinding("tasks/update", TaskParams, self.update),
            MethodBinding("tasks/cancel", TaskParams, self.cancel),
        )

    async def intercept_tool_call(
        self,
        params: CallToolRequestParams,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:
        if params.name != "slow_task" or not _declares_tasks(ctx):
            return await call_next(ctx)
        delay = float((params.arguments or {}).get("delay", 0.05))
        task_id = f"{self.server_name}-{uuid.uuid4()}"
        now = _now()
        task: dict[str, Any] = {
            "taskId": task_id,
            "status": "working",
            "createdAt": now,
            "lastUpdatedAt": now,
            "ttlMs": TTL_MS,
            "pollIntervalMs": POLL_MS,
        }
        self.tasks[task_id] = task
        job = asyncio.create_task(self._finish(task, delay))
        self.running.add(job)
        job.add_done_callback(self.running.discard)
        return {"resultType": "task", **task}

    async def _finish(self, task: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        if task["status"] == "working":
            task["status"] = "completed"
            task["lastUpdatedAt"] = _now()
            text = f"done by {self.server_name}"
            task["result"] = {"content": [{"type": "text", "text": text}], "isError": False}

    def _task(self, params: TaskParams) -> dict[str, Any]:
        task = self.tasks.get(params.taskId)
        if task is None:
            raise MCPError(-32602, f"Unknown task: {params.taskId}")
        return task

    async def get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        return {"resultType": "complete", **self._task(params), "servedBy": self.server_name}

    async def update(
        self, ctx: ServerRequestContext[Any, Any], params: TaskParams
    ) -> HandlerResult:
        self._task(params)
        return {"resultType": "complete"}

    async def cancel(
        self, ctx: ServerRequestContext[Any, Any], params: TaskParams
    ) -> HandlerResult:
        task = self._task(params)
        if task["status"] == "working":
            task["status"] = "cancelled"
        return {"resultType": "complete"}


def _declares_tasks(ctx: ServerRequestContext[Any, Any]) -> bool:
    """SEP-2663: a CreateTaskResult only for a client whose request declares the extension."""
    meta = ctx.meta
    dumped = meta.model_dump(by_alias=True) if isinstance(meta, BaseModel) else dict(meta or {})
    capabilities = dumped.get("io.modelcontextprotocol/clientCapabilities") or {}
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and TASKS in extensions


def build_tasks_server(name: str) -> MCPServer:
    server: MCPServer = MCPServer(name, log_level="WARNING", extensions=[TasksExtension(name)])

    @server.tool()
    def whoami() -> str:
        """The name of the backend that served this call."""
        return name

    @server.tool()
    async def slow_task(delay: float = 0.05) -> str:
        """Finishes after ``delay`` seconds (as a task for clients that declare tasks)."""
        await asyncio.sleep(delay)
        return f"done by {name}"

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = build_tasks_server(args.name)
    print(f"tasks server {args.name} on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.run("streamable-http", host="127.0.0.1", port=args.port, stateless_http=True)


if __name__ == "__main__":
    main()
