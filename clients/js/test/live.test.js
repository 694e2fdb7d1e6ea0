// live(): the Server-Sent-Events stream, read with fetch from a real local server.
import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";

import { createCalendlyConnect, NotAuthenticatedError, ServiceError } from "../calendly-connect.js";
import {
  connection,
  eventStream,
  meeting,
  problem,
  sleep,
  sse,
  startService,
  tokenSource,
  until,
} from "../test-support/service.js";

describe("live()", () => {
  let service;
  let onLive; // (request, response, n) for the n-th GET /api/live of the test (0-based)
  let liveRequests;
  let subscription;

  before(async () => {
    service = await startService(
      {
        "GET /api/live": (req, res) => {
          const n = liveRequests.length;
          const record = { ...req, at: Date.now(), closed: false };
          liveRequests.push(record);
          res.on("close", () => {
            record.closed = true; // the client ended it (or the server did)
          });
          onLive(req, res, n);
        },
      },
      { prefix: "/calendly" },
    );
  });
  after(() => {
    subscription?.close(); // a live stream left open would keep retrying after the server is gone
    return service.close();
  });

  beforeEach(() => {
    liveRequests = [];
    if (subscription) {
      subscription.close();
      subscription = null;
    }
  });

  /** Starts live() with handlers that record everything. */
  function start(getToken = () => "tok-1") {
    const client = createCalendlyConnect({ url: service.url, getToken });
    const seen = { meetings: [], connections: [], states: [], errors: [] };
    subscription = client.live({
      onMeeting: (m) => seen.meetings.push(m.id),
      onConnection: (c) => seen.connections.push(c && c.status),
      onStateChange: (s) => seen.states.push(s),
      onError: (e) => seen.errors.push(e),
    });
    return { seen, subscription };
  }

  test("events are delivered: ready, connection, meetings; heartbeats are skipped", async () => {
    onLive = (req, res) => {
      const write = eventStream(res);
      write(sse("ready", { cursor: 7 }));
      write(sse("connection", { connection: connection() }));
      write(": ping\n\n");
      write(sse("meetings", { meetings: [{ id: "m1" }, { id: "m2" }] }, 8));
      write(sse("connection", { connection: null }));
    };
    const { seen, subscription: sub } = start();
    assert.equal(sub.state, "connecting");
    await until(() => seen.connections.length === 2, { what: "events" });
    assert.deepEqual(seen.meetings, ["m1", "m2"]);
    assert.deepEqual(seen.connections, ["active", null]);
    assert.deepEqual(seen.states, ["open"]);
    assert.equal(sub.state, "open");
    assert.deepEqual(seen.errors, []);
    const [request] = liveRequests;
    assert.equal(request.fullPath, "/calendly/api/live");
    assert.equal(request.headers.authorization, "Bearer tok-1");
    assert.equal(request.headers.accept, "text/event-stream");
    assert.equal(request.headers["last-event-id"], undefined);
  });

  /** Waits, without timers (they may be mocked), until `predicate` holds. */
  async function settle(predicate, what) {
    for (let i = 0; i < 5000 && !predicate(); i++) {
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.ok(predicate(), `never: ${what}`);
  }

  for (const [heartbeat, silence] of [
    [30, 90_000], // three of the server's intervals
    [undefined, 45_000], // a server that does not say: 45 s
  ]) {
    test(`a silent stream counts as dead after ${silence / 1000} s when ready says heartbeat ${heartbeat}`, async (t) => {
      t.mock.timers.enable({ apis: ["setTimeout"] });
      onLive = (req, res) => {
        eventStream(res)(sse("ready", heartbeat === undefined ? { cursor: 1 } : { cursor: 1, heartbeat }));
      };
      const { seen } = start();
      await settle(() => seen.states.includes("open"), "the stream open");
      t.mock.timers.tick(silence - 1_000);
      for (let i = 0; i < 200; i++) {
        await new Promise((resolve) => setImmediate(resolve));
      }
      assert.equal(liveRequests[0].closed, false, "given up before its time");
      t.mock.timers.tick(2_000);
      await settle(() => liveRequests[0].closed, "the silent stream given up");
      assert.deepEqual(seen.states, ["open", "retrying"]);
    });
  }

  test("a dropped stream is resumed with Last-Event-ID (after the server's retry: delay)", async () => {
    onLive = (req, res, n) => {
      const write = eventStream(res);
      if (n === 0) {
        write("retry: 50\n\n");
        write(sse("ready", { cursor: 3 }));
        write(sse("meetings", { meetings: [meeting("m4")] }, 4));
        res.end(); // dropped
      } else {
        write(sse("ready", { cursor: 4 }));
        write(sse("meetings", { meetings: [meeting("m5")] }, 5));
      }
    };
    const { seen } = start();
    await until(() => seen.meetings.length === 2, { what: "the second stream's meeting" });
    assert.deepEqual(seen.meetings, ["m4", "m5"]);
    assert.equal(liveRequests.length, 2);
    assert.equal(liveRequests[1].headers["last-event-id"], "4");
    const gap = liveRequests[1].at - liveRequests[0].at;
    assert.ok(gap >= 30 && gap < 700, `reconnected after ${gap} ms (retry: 50, jittered)`);
    assert.deepEqual(seen.states, ["open", "retrying", "open"]);
  });

  test("without any event id, the resume point is the ready cursor", async () => {
    onLive = (req, res, n) => {
      const write = eventStream(res);
      write("retry: 20\n\n");
      write(sse("ready", { cursor: n === 0 ? 9 : 10 }));
      if (n === 0) {
        res.end();
      }
    };
    start();
    await until(() => liveRequests.length === 2);
    assert.equal(liveRequests[1].headers["last-event-id"], "9");
  });

  test("`expired`: a fresh token at once, then resumed from the last id", async () => {
    onLive = (req, res, n) => {
      const write = eventStream(res);
      if (n === 0) {
        write(sse("ready", { cursor: 3 }));
        write(sse("meetings", { meetings: [meeting("m5")] }, 5));
        write(sse("expired", { reason: "token_expired" }));
        // Left open: the client must not wait for the server to end an expired stream.
      } else {
        write(sse("ready", { cursor: 5 }));
      }
    };
    const tokens = tokenSource("tok-1", "tok-2");
    const { seen } = start(tokens.getToken);
    await until(() => liveRequests.length === 2 && seen.states.length === 3, { what: "the second stream" });
    assert.equal(liveRequests[1].headers.authorization, "Bearer tok-2");
    assert.equal(liveRequests[1].headers["last-event-id"], "5");
    const gap = liveRequests[1].at - liveRequests[0].at;
    assert.ok(gap < 500, `no back-off after expiry (${gap} ms)`);
    assert.deepEqual(tokens.calls, [{ refresh: false }, { refresh: true }]);
    assert.deepEqual(seen.states, ["open", "connecting", "open"]);
    assert.deepEqual(seen.errors, []);
    await until(() => liveRequests[0].closed, { what: "the expired stream to be let go" });
  });

  test("a 401: one fresh token, then the stream", async () => {
    onLive = (req, res) => {
      if (req.headers.authorization !== "Bearer tok-2") {
        problem(res, 401, "not-authenticated");
        return;
      }
      eventStream(res)(sse("ready", { cursor: 1 }));
    };
    const tokens = tokenSource("tok-1", "tok-2");
    const { seen } = start(tokens.getToken);
    await until(() => seen.states.includes("open"));
    assert.equal(liveRequests.length, 2);
    assert.deepEqual(seen.errors, []);
  });

  test("a 401 and no fresh token: onError(NotAuthenticatedError), closed, no more tries", async () => {
    onLive = (req, res) => problem(res, 401, "not-authenticated", { title: "Not authenticated" });
    const tokens = tokenSource("tok-1", null);
    const { seen, subscription: sub } = start(tokens.getToken);
    await until(() => seen.states.includes("closed"));
    assert.equal(seen.errors.length, 1);
    assert.ok(seen.errors[0] instanceof NotAuthenticatedError);
    assert.equal(seen.errors[0].status, 401);
    assert.equal(sub.state, "closed");
    await sleep(100);
    assert.equal(liveRequests.length, 1);
  });

  test("a 5xx: onError, back-off of about a second, then the stream", async () => {
    onLive = (req, res, n) => {
      if (n === 0) {
        problem(res, 503, "storage-unavailable", { title: "Service temporarily unavailable" });
        return;
      }
      eventStream(res)(sse("ready", { cursor: 1 }));
    };
    const { seen } = start();
    await until(() => seen.states.includes("open"), { timeout: 4000 });
    assert.equal(seen.errors.length, 1);
    assert.ok(seen.errors[0] instanceof ServiceError);
    assert.equal(seen.errors[0].status, 503);
    const gap = liveRequests[1].at - liveRequests[0].at;
    assert.ok(gap >= 700 && gap <= 1500, `backed off ${gap} ms (1 s, jittered)`);
    assert.deepEqual(seen.states, ["retrying", "open"]);
  });

  test("close() ends the request and no callback follows", async () => {
    let write;
    onLive = (req, res) => {
      write = eventStream(res);
      write(sse("ready", { cursor: 1 }));
    };
    const { seen, subscription: sub } = start();
    await until(() => seen.states.includes("open"));
    sub.close();
    assert.equal(sub.state, "closed");
    await until(() => liveRequests[0].closed, { what: "the server to see the request end" });
    write(sse("meetings", { meetings: [meeting("late")] }, 2));
    await sleep(100);
    assert.deepEqual(seen.meetings, []);
    assert.deepEqual(seen.states, ["open"], "no onStateChange for a close() the host asked for");
    assert.equal(liveRequests.length, 1);
  });

  test("close() during the back-off: no further request, no callback", async () => {
    onLive = (req, res) => problem(res, 502, "calendly-unavailable");
    const { seen, subscription: sub } = start();
    await until(() => seen.errors.length === 1);
    sub.close();
    await sleep(1600);
    assert.equal(liveRequests.length, 1);
    assert.deepEqual(seen.states, ["retrying"]);
    assert.equal(seen.errors.length, 1);
  });

  test("close() from inside a handler stops the rest of the same chunk", async () => {
    onLive = (req, res) => {
      eventStream(res)(sse("ready", { cursor: 1 }) + sse("meetings", { meetings: [{ id: "a" }, { id: "b" }] }, 2));
    };
    const client = createCalendlyConnect({ url: service.url, getToken: () => "t" });
    const seen = [];
    const sub = client.live({
      onMeeting: (m) => {
        seen.push(m.id);
        sub.close();
      },
    });
    await until(() => seen.length > 0);
    await sleep(50);
    assert.deepEqual(seen, ["a"]);
  });
});
