// A TypeScript SDK 2026-07-28 MCP server (@modelcontextprotocol/server 2.4) for the flow
// tests: progress, subscriptions/listen, MRTR. Plain ESM, no build step.
//
//   node flows_server.mjs --name NAME --port PORT --key HEX [--peers H:P,H:P]
//
// The same tools as flows_server.py (see there): whoami, countdown(n) (n progress
// notifications, then "liftoff"), change_tools (a tools list change published on this
// instance's listen streams and, by POST /bus, on its peers'), ask(word) (MRTR: an
// elicitation and a requestState sealed by the SDK's HMAC codec under the key shared by
// all instances, then "<word> <answer> asked-by <name> answered-by <name>").
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import { toNodeHandler } from "@modelcontextprotocol/node";
import {
  acceptedContent,
  createMcpHandler,
  createRequestStateCodec,
  inputRequired,
  McpServer,
} from "@modelcontextprotocol/server";
import { z } from "zod";

const { values: args } = parseArgs({
  options: {
    name: { type: "string" },
    port: { type: "string" },
    key: { type: "string" },
    peers: { type: "string", default: "" },
  },
});
const NAME = args.name;
const PEERS = args.peers.split(",").filter((p) => p);
const codec = createRequestStateCodec({ key: Buffer.from(args.key, "hex") });
const SCHEMA = {
  type: "object",
  properties: { answer: { type: "string" } },
  required: ["answer"],
};
let handler;

async function publish() {
  handler.notify.toolsChanged();
  for (const peer of PEERS) {
    const response = await fetch(`http://${peer}/bus`, { method: "POST", body: "tools" });
    if (!response.ok) throw new Error(`peer ${peer}: ${response.status}`);
  }
}

function factory() {
  const server = new McpServer(
    { name: NAME, version: "1.0.0" },
    {
      capabilities: { tools: { listChanged: true } },
      requestState: { verify: codec.verify },
    },
  );
  server.registerTool("whoami", { description: "The instance's name." }, async () => ({
    content: [{ type: "text", text: NAME }],
  }));
  server.registerTool(
    "countdown",
    { description: "n progress notifications, then liftoff.", inputSchema: { n: z.number() } },
    async ({ n }, ctx) => {
      const progressToken = ctx.mcpReq._meta?.progressToken;
      for (let i = 1; i <= n; i++) {
        if (progressToken !== undefined) {
          await ctx.mcpReq.notify({
            method: "notifications/progress",
            params: { progressToken, progress: i, total: n, message: `step ${i}` },
          });
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      return { content: [{ type: "text", text: "liftoff" }] };
    },
  );
  server.registerTool(
    "change_tools",
    { description: "Publish a tools list change here and at the peers." },
    async () => {
      await publish();
      return { content: [{ type: "text", text: `changed by ${NAME}` }] };
    },
  );
  server.registerTool(
    "ask",
    { description: "MRTR: ask for an answer, then echo it.", inputSchema: { word: z.string() } },
    async ({ word }, ctx) => {
      const state = ctx.mcpReq.requestState();
      const answer = acceptedContent(ctx.mcpReq.inputResponses, "answer");
      if (state === undefined || answer?.answer === undefined) {
        return inputRequired({
          inputRequests: {
            answer: inputRequired.elicit({ message: `answer for ${word}?`, requestedSchema: SCHEMA }),
          },
          requestState: await codec.mint({ asker: NAME }),
        });
      }
      const text = `${word} ${answer.answer} asked-by ${state.asker} answered-by ${NAME}`;
      return { content: [{ type: "text", text }] };
    },
  );
  return server;
}

handler = createMcpHandler(factory, { legacy: "stateless" });
const node = toNodeHandler(handler);
const http = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/bus" && req.method === "POST") {
    req.resume();
    req.on("end", () => {
      handler.notify.toolsChanged();
      res.writeHead(204).end();
    });
    return;
  }
  if (path !== "/mcp") {
    res.writeHead(404).end();
    return;
  }
  node(req, res);
});
http.listen(Number(args.port), "127.0.0.1", () => {
  console.error(`flows server ${NAME} on 127.0.0.1:${args.port}`);
});
