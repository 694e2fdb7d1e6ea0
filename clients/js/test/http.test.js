// status, disconnect, meetings and the HTTP rules every call follows (token, 401, problems).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  CalendlyConnectError,
  createCalendlyConnect,
  NetworkError,
  NotAuthenticatedError,
  ServiceError,
} from "../calendly-connect.js";
import {
  connection,
  json,
  meeting,
  problem,
  startService,
  tokenSource,
  until,
} from "../test-support/service.js";

describe("HTTP calls", () => {
  let service;
  let script; // "METHOD /path" → handler, swapped per test
  before(async () => {
    const routes = new Proxy({}, { get: (_, key) => script[key] });
    service = await startService(routes, { prefix: "/calendly" });
  });
  after(() => service.close());

  function client(getToken = () => "tok-1") {
    service.requests.length = 0;
    return createCalendlyConnect({ url: `${service.url}/`, getToken });
  }

  test("the base URL keeps its path prefix and loses the trailing slash", () => {
    script = {};
    assert.equal(client().url, service.url);
    assert.equal(
      createCalendlyConnect({ url: "https://app.example.com/calendly///?x=1#y", getToken: () => "t" }).url,
      "https://app.example.com/calendly",
    );
    assert.throws(() => createCalendlyConnect({ url: "ftp://x", getToken: () => "t" }), TypeError);
    assert.throws(() => createCalendlyConnect({ url: "https://x" }), TypeError);
  });

  test("status() answers the connection, with the headers every call sends", async () => {
    const conn = connection();
    script = { "GET /api/calendly/connection": (req, res) => json(res, 200, conn) };
    const c = client();
    assert.deepEqual(await c.status(), conn);
    const [request] = service.requests;
    assert.equal(request.fullPath, "/calendly/api/calendly/connection");
    assert.equal(request.headers.authorization, "Bearer tok-1");
    assert.equal(request.headers.accept, "application/json");
    assert.equal(request.headers.cookie, undefined);
  });

  test("every request, the live stream's too, is sent with credentials \"same-origin\"", async () => {
    // Cookies only on the service's own origin (its OAuth binding cookie), none cross-origin.
    script = {
      "GET /api/calendly/connection": (req, res) => json(res, 200, connection()),
      "DELETE /api/calendly/connection": (req, res) => json(res, 200, { connection: null }),
      "GET /api/meetings": (req, res) => json(res, 200, { meetings: [], next_cursor: null }),
      "GET /api/live": (req, res) => {
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.end('event: ready\ndata: {"cursor": 1}\n\n');
      },
    };
    service.requests.length = 0;
    const sent = [];
    const c = createCalendlyConnect({
      url: service.url,
      getToken: () => "tok-1",
      fetch: (url, init) => {
        sent.push([new URL(url).pathname, init.method ?? "GET", init.credentials]);
        return fetch(url, init);
      },
    });
    await c.status();
    await c.disconnect();
    for await (const page of c.meetings()) {
      assert.deepEqual(page.meetings, []);
    }
    const states = [];
    const live = c.live({ onStateChange: (state) => states.push(state) });
    try {
      await until(() => states.includes("open"), { what: "the live stream" });
    } finally {
      live.close();
    }
    assert.deepEqual(sent, [
      ["/calendly/api/calendly/connection", "GET", "same-origin"],
      ["/calendly/api/calendly/connection", "DELETE", "same-origin"],
      ["/calendly/api/meetings", "GET", "same-origin"],
      ["/calendly/api/live", "GET", "same-origin"],
    ]);
  });

  test("status() answers null for 404 connection-not-found", async () => {
    script = {
      "GET /api/calendly/connection": (req, res) =>
        problem(res, 404, "connection-not-found", { title: "No Calendly connection" }),
    };
    assert.equal(await client().status(), null);
  });

  test("a 404 that is not connection-not-found (e.g. a wrong base URL) stays an error", async () => {
    script = {};
    const error = await client()
      .status()
      .then(() => assert.fail("resolved"), (e) => e);
    assert.ok(error instanceof ServiceError);
    assert.equal(error.status, 404);
  });

  test("disconnect() sends DELETE and answers the service's result", async () => {
    const result = {
      connection: connection({ status: "disconnected" }),
      subscription_deleted: true,
      revoke_failed: false,
      already_disconnected: false,
    };
    script = { "DELETE /api/calendly/connection": (req, res) => json(res, 200, result) };
    assert.deepEqual(await client().disconnect(), result);
    assert.equal(service.requests[0].method, "DELETE");
  });

  test("meetings() pages through next_cursor with the filters encoded", async () => {
    const pages = {
      "": { meetings: [meeting("m1"), meeting("m2")], next_cursor: "c-2" },
      "c-2": { meetings: [meeting("m3"), meeting("m4")], next_cursor: "c-3" },
      "c-3": { meetings: [meeting("m5")], next_cursor: null },
    };
    script = {
      "GET /api/meetings": (req, res) => json(res, 200, pages[req.query.get("cursor") ?? ""]),
    };
    const c = client();
    const seen = [];
    for await (const page of c.meetings({
      status: "canceled",
      startsAfter: new Date("2030-01-01T00:00:00Z"),
      startsBefore: "2030-02-01T00:00:00+01:00",
      limit: 2,
    })) {
      seen.push([page.meetings.map((m) => m.id), page.nextCursor]);
    }
    assert.deepEqual(seen, [
      [["m1", "m2"], "c-2"],
      [["m3", "m4"], "c-3"],
      [["m5"], null],
    ]);
    assert.equal(service.requests.length, 3);
    for (const [i, request] of service.requests.entries()) {
      assert.equal(request.query.get("status"), "canceled");
      assert.equal(request.query.get("starts_after"), "2030-01-01T00:00:00.000Z");
      // A "+" must arrive as "+", not as a space.
      assert.equal(request.query.get("starts_before"), "2030-02-01T00:00:00+01:00");
      assert.equal(request.query.get("limit"), "2");
      assert.equal(request.query.get("cursor"), [null, "c-2", "c-3"][i]);
    }
    assert.match(service.requests[0].raw.url, /starts_before=2030-02-01T00%3A00%3A00%2B01%3A00/);
  });

  test("meetings() without filters sends no query; stopping early stops fetching", async () => {
    script = {
      "GET /api/meetings": (req, res) => json(res, 200, { meetings: [meeting("m1")], next_cursor: "more" }),
    };
    const c = client();
    for await (const page of c.meetings()) {
      assert.equal(page.nextCursor, "more");
      break;
    }
    assert.equal(service.requests.length, 1);
    assert.equal(service.requests[0].raw.url, "/calendly/api/meetings");
  });

  test("a 401 renews the token once and retries with the new one", async () => {
    script = {
      "GET /api/calendly/connection": (req, res) =>
        req.headers.authorization === "Bearer tok-2"
          ? json(res, 200, connection())
          : problem(res, 401, "not-authenticated", { title: "Not authenticated" }),
    };
    const tokens = tokenSource("tok-1", "tok-2");
    const c = client(tokens.getToken);
    assert.equal((await c.status()).status, "active");
    assert.deepEqual(tokens.calls, [{ refresh: false }, { refresh: true }]);
    assert.deepEqual(
      service.requests.map((r) => r.headers.authorization),
      ["Bearer tok-1", "Bearer tok-2"],
    );
  });

  test("a 401 again after the new token: NotAuthenticatedError, no third try", async () => {
    script = {
      "GET /api/calendly/connection": (req, res) =>
        problem(res, 401, "not-authenticated", { title: "Not authenticated", detail: "Expired.", request_id: "r-1" }),
    };
    const tokens = tokenSource("tok-1", "tok-2", "tok-3");
    const error = await client(tokens.getToken)
      .status()
      .then(() => assert.fail("resolved"), (e) => e);
    assert.ok(error instanceof NotAuthenticatedError);
    assert.equal(error.code, "not_authenticated");
    assert.equal(error.status, 401);
    assert.equal(error.requestId, "r-1");
    assert.equal(error.detail, "Expired.");
    assert.equal(service.requests.length, 2);
  });

  test("a 401 and no new token (null, or the same one): no retry", async () => {
    script = {
      "GET /api/calendly/connection": (req, res) => problem(res, 401, "not-authenticated"),
    };
    for (const refreshed of [null, "tok-1"]) {
      const tokens = tokenSource("tok-1", refreshed);
      const error = await client(tokens.getToken)
        .status()
        .then(() => assert.fail("resolved"), (e) => e);
      assert.ok(error instanceof NotAuthenticatedError);
      assert.equal(service.requests.length, 1);
    }
  });

  test("no token: NotAuthenticatedError without any request", async () => {
    script = {};
    for (const getToken of [() => null, async () => "", () => { throw new Error("signed out"); }]) {
      const error = await client(getToken)
        .status()
        .then(() => assert.fail("resolved"), (e) => e);
      assert.ok(error instanceof NotAuthenticatedError);
      assert.equal(error.status, 0);
    }
    assert.equal(service.requests.length, 0);
  });

  test("problem details become a ServiceError with title, detail, status, request id", async () => {
    script = {
      "DELETE /api/calendly/connection": (req, res) =>
        problem(res, 503, "storage-unavailable", {
          title: "Service temporarily unavailable",
          detail: "Retry shortly.",
          request_id: "req-9",
        }),
      "GET /api/meetings": (req, res) =>
        problem(res, 400, "invalid-request", {
          title: "Invalid request",
          detail: "Invalid query parameter 'limit'.",
          errors: [{ parameter: "limit", source: "query", message: "must be at most 200" }],
        }),
    };
    const c = client();
    const error = await c.disconnect().then(() => assert.fail("resolved"), (e) => e);
    assert.ok(error instanceof ServiceError && error instanceof CalendlyConnectError);
    assert.equal(error.code, "service");
    assert.equal(error.status, 503);
    assert.equal(error.title, "Service temporarily unavailable");
    assert.equal(error.detail, "Retry shortly.");
    assert.equal(error.requestId, "req-9");
    assert.equal(error.problem.type, "urn:calendly-connect:problem:storage-unavailable");
    assert.equal(error.message, "Service temporarily unavailable: Retry shortly.");

    const invalid = await c
      .meetings({ limit: 999 })
      .next()
      .then(() => assert.fail("resolved"), (e) => e);
    assert.equal(invalid.detail, "Invalid query parameter 'limit'. must be at most 200");
  });

  test("an error without problem details still reads well", async () => {
    script = {
      "GET /api/calendly/connection": (req, res) => {
        res.writeHead(502, { "content-type": "text/html", "x-request-id": "edge-1" });
        res.end("<h1>Bad gateway</h1>");
      },
    };
    const error = await client()
      .status()
      .then(() => assert.fail("resolved"), (e) => e);
    assert.ok(error instanceof ServiceError);
    assert.equal(error.status, 502);
    assert.equal(error.problem, null);
    assert.equal(error.requestId, "edge-1");
    assert.equal(error.title, "Calendly did not answer properly");
  });

  test("no answer at all: NetworkError with status 0", async () => {
    const down = await startService({});
    await down.close(); // nothing listens on that port any more
    const c = createCalendlyConnect({ url: down.url, getToken: () => "t" });
    const error = await c.status().then(() => assert.fail("resolved"), (e) => e);
    assert.ok(error instanceof NetworkError);
    assert.equal(error.code, "network");
    assert.equal(error.status, 0);
  });

  test("an aborted signal rejects with its reason", async () => {
    script = {
      "GET /api/calendly/connection": () => {}, // never answers
    };
    const c = client();
    const controller = new AbortController();
    const pending = c.status({ signal: controller.signal });
    setTimeout(() => controller.abort(), 20);
    const error = await pending.then(() => assert.fail("resolved"), (e) => e);
    assert.equal(error.name, "AbortError");
    const reason = new Error("gone");
    const early = await c.status({ signal: AbortSignal.abort(reason) }).catch((e) => e);
    assert.equal(early, reason);
  });
});
