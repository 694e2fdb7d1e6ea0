// Test doubles shared by the tests in ../test/: a real local HTTP server that plays the
// calendly-connect service, and a fake browser window for popups and their messages.
// (Outside test/ on purpose: `node --test test/` would count a helper there as a test file.)

import { createHash } from "node:crypto";
import http from "node:http";

export const PROBLEM_PREFIX = "urn:calendly-connect:problem:";

/**
 * Starts a service double on 127.0.0.1 (port 0). `routes` maps "METHOD /path" (the path
 * after `prefix`) to `(request, response) => void`; each request is recorded first as
 * {method, path, query, headers, body, raw}. Unknown routes answer a 404 problem.
 */
export async function startService(routes, { prefix = "" } = {}) {
  const requests = [];
  const server = http.createServer(async (raw, res) => {
    const chunks = [];
    for await (const chunk of raw) {
      chunks.push(chunk);
    }
    const text = Buffer.concat(chunks).toString("utf8");
    const url = new URL(raw.url, "http://service.test");
    const request = {
      method: raw.method,
      fullPath: url.pathname,
      path: url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : url.pathname,
      query: url.searchParams,
      headers: raw.headers,
      body: text ? JSON.parse(text) : undefined,
      raw,
    };
    requests.push(request);
    const route = routes[`${request.method} ${request.path}`];
    try {
      if (route && url.pathname.startsWith(prefix)) {
        await route(request, res);
      } else {
        problem(res, 404, "not-found", { title: "Not Found", detail: "No such route." });
      }
    } catch (error) {
      if (!res.headersSent) {
        res.writeHead(500, { "content-type": "text/plain" });
      }
      res.end(String(error && error.stack));
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    url: origin + prefix,
    requests,
    /** The recorded requests to "METHOD /path". */
    calls(key) {
      return requests.filter((r) => `${r.method} ${r.path}` === key);
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export function json(res, status, body, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

export function problem(res, status, slug, { title = "Problem", detail = "It failed.", ...rest } = {}) {
  res.writeHead(status, { "content-type": "application/problem+json" });
  res.end(JSON.stringify({ type: PROBLEM_PREFIX + slug, title, status, detail, ...rest }));
}

/** Starts an event stream; answers write(text) for raw SSE text. */
export function eventStream(res) {
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" });
  res.flushHeaders();
  return (text) => res.write(text);
}

export function sse(event, data, id) {
  return `${id === undefined ? "" : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** A popup as window.open answers it: its `closed` and `location` are the test's to set. */
export class FakePopup {
  constructor(url) {
    this.closed = false;
    this.location = { href: url || "about:blank" };
    this.document = { title: "", body: { textContent: "" } };
    this.focusCount = 0;
    this.closeCount = 0;
  }

  focus() {
    this.focusCount += 1;
  }

  close() {
    this.closeCount += 1;
    this.closed = true;
  }
}

/** A browser window: open() records popups (or answers null when blocked), message() posts. */
export class FakeWindow extends EventTarget {
  constructor() {
    super();
    this.opened = [];
    this.blockPopups = false;
    this.listeners = new Map(); // type → Set of listeners, to check they are all removed
  }

  addEventListener(type, listener, options) {
    if (!this.listeners.has(type)) {
      this.listeners.set(type, new Set());
    }
    this.listeners.get(type).add(listener);
    super.addEventListener(type, listener, options);
  }

  removeEventListener(type, listener, options) {
    this.listeners.get(type)?.delete(listener);
    super.removeEventListener(type, listener, options);
  }

  listenerCount(type) {
    return this.listeners.get(type)?.size ?? 0;
  }

  open(url, name, features) {
    if (this.blockPopups) {
      return null;
    }
    const popup = new FakePopup(url);
    this.opened.push({ url, name, features, popup });
    return popup;
  }

  /** Dispatches a MessageEvent-like event, as postMessage from `source` would. */
  message(data, { origin, source }) {
    const event = new Event("message");
    Object.defineProperties(event, {
      data: { value: data },
      origin: { value: origin },
      source: { value: source },
    });
    this.dispatchEvent(event);
  }
}

export function sha256Base64url(text) {
  return createHash("sha256").update(text, "ascii").digest("base64url");
}

/** Resolves once `predicate()` is truthy; fails after `timeout` ms. */
export async function until(predicate, { timeout = 3000, what = "condition" } = {}) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > timeout) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await sleep(5);
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether `promise` is still pending after `ms` ms. */
export async function stillPending(promise, ms = 50) {
  const marker = Symbol("pending");
  const winner = await Promise.race([promise.then(() => "resolved", () => "rejected"), sleep(ms).then(() => marker)]);
  return winner === marker;
}

/** getToken that answers `tokens[0]` normally and the next one on each refresh; records calls. */
export function tokenSource(first, ...refreshed) {
  const calls = [];
  let current = first;
  const getToken = async (context) => {
    calls.push({ ...context });
    if (context.refresh) {
      current = refreshed.length > 0 ? refreshed.shift() : null;
    }
    return current;
  };
  return { getToken, calls };
}

export function connection(overrides = {}) {
  return {
    status: "active",
    webhook_status: "active",
    calendly_user_uri: "https://api.calendly.com/users/U1",
    organization_uri: "https://api.calendly.com/organizations/O1",
    email: "ada@example.com",
    name: "Ada",
    token_expires_at: "2030-01-01T02:00:00Z",
    last_error: null,
    connected_since: "2030-01-01T00:00:00Z",
    updated_at: "2030-01-01T00:00:00Z",
    maintenance: null,
    ...overrides,
  };
}

export function meeting(id, overrides = {}) {
  return {
    id,
    event_uri: `https://api.calendly.com/scheduled_events/${id}`,
    name: "Intro call",
    start_time: "2030-01-02T10:00:00Z",
    end_time: "2030-01-02T10:30:00Z",
    status: "active",
    location: { type: "zoom", join_url: "https://zoom.example/j/1" },
    cancellation: null,
    invitees: [
      {
        invitee_uri: `https://api.calendly.com/scheduled_events/${id}/invitees/I1`,
        email: "bob@example.com",
        name: "Bob",
        status: "active",
        rescheduled: false,
        old_invitee_uri: null,
        new_invitee_uri: null,
        no_show: false,
        cancellation: null,
      },
    ],
    ...overrides,
  };
}

export function inMs(ms) {
  return new Date(Date.now() + ms).toISOString();
}
