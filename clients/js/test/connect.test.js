// connect() and reconnect(): the popup, its message, the hand-off, and every way it can end.
import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";

import {
  AccountInUseError,
  AuthorizationDeniedError,
  AuthorizationExpiredError,
  createCalendlyConnect,
  PopupBlockedError,
  PopupClosedError,
  ServiceError,
} from "../calendly-connect.js";
import {
  connection,
  eventStream,
  FakePopup,
  FakeWindow,
  inMs,
  json,
  problem,
  sha256Base64url,
  sse,
  startService,
  stillPending,
  until,
} from "../test-support/service.js";

const AUTH_URL = "https://calendly.example/oauth/authorize?client_id=abc&state=s";
const MESSAGE = "calendly-connect";
// Authorizations in these tests expire soon, so that a flow a failing test leaves behind
// cannot keep the test process alive for the service's real 10 minutes.
const FLOW_MS = 5000;

describe("connect and reconnect", () => {
  let service;
  let script;
  let win;
  let client;

  before(async () => {
    const routes = new Proxy({}, { get: (_, key) => script[key] });
    service = await startService(routes, { prefix: "/calendly" });
  });
  after(() => service.close());

  beforeEach(() => {
    service.requests.length = 0;
    win = new FakeWindow();
    client = createCalendlyConnect({ url: `${service.url}/`, getToken: () => "tok", window: win });
    script = {
      "GET /api/calendly/connection": (req, res) => problem(res, 404, "connection-not-found"),
      "POST /api/calendly/connect": (req, res) =>
        json(res, 200, { authorization_url: AUTH_URL, state: "state-1", expires_at: inMs(FLOW_MS) }),
    };
  });

  /** Calls connect(), checks the popup opened synchronously, waits until it shows Calendly. */
  async function connectAndWait(options) {
    const promise = client.connect(options);
    promise.catch(() => {}); // inspected by each test
    assert.equal(win.opened.length, 1, "the popup opens synchronously, inside the click");
    const { popup } = win.opened[0];
    await until(() => popup.location.href === AUTH_URL, { what: "the popup to be sent to Calendly" });
    return { promise, popup };
  }

  function post(popup, data, origin = service.origin) {
    win.message({ type: MESSAGE, ...data }, { origin, source: popup });
  }

  async function rejection(promise) {
    return promise.then(
      (value) => assert.fail(`resolved with ${JSON.stringify(value)}`),
      (error) => error,
    );
  }

  test("hand-off: the popup's code is completed with a verifier matching the challenge", async () => {
    const conn = connection();
    script["POST /api/calendly/connect/complete"] = (req, res) =>
      json(res, 200, { connection: conn, switched_account: false });
    const { promise, popup } = await connectAndWait();
    const [opened] = win.opened;
    assert.equal(opened.url, "");
    assert.equal(opened.name, "calendly-connect");
    assert.equal(opened.features, "popup,width=560,height=760");
    assert.equal(popup.document.body.textContent, "Opening Calendly…");

    post(popup, { state: "state-1", ok: true, stage: "authorized", code: "code-1" });
    assert.deepEqual(await promise, { outcome: "connected", connection: conn, switchedAccount: false });

    const [start] = service.calls("POST /api/calendly/connect");
    const [complete] = service.calls("POST /api/calendly/connect/complete");
    assert.equal(start.fullPath, "/calendly/api/calendly/connect");
    assert.match(start.body.completion_challenge, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(complete.body.state, "state-1");
    assert.equal(complete.body.code, "code-1");
    assert.match(complete.body.completion_verifier, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(sha256Base64url(complete.body.completion_verifier), start.body.completion_challenge);
    assert.equal(complete.headers.authorization, "Bearer tok");
    assert.equal(complete.headers["content-type"], "application/json");
    assert.equal(popup.closed, true);
    assert.equal(win.listenerCount("message"), 0, "the message listener is removed");
  });

  test("each connect uses a new verifier", async () => {
    script["POST /api/calendly/connect/complete"] = (req, res) =>
      json(res, 200, { connection: connection(), switched_account: false });
    for (let i = 0; i < 2; i += 1) {
      win.opened.length = 0;
      const { promise, popup } = await connectAndWait();
      post(popup, { state: "state-1", ok: true, stage: "authorized", code: "c" });
      await promise;
    }
    const challenges = service.calls("POST /api/calendly/connect").map((r) => r.body.completion_challenge);
    assert.equal(new Set(challenges).size, 2);
  });

  test("the service completed it itself: the connection in the message; switchedAccount", async () => {
    let reads = 0;
    script["GET /api/calendly/connection"] = (req, res) => {
      reads += 1;
      json(res, 200, connection({ calendly_user_uri: "https://api.calendly.com/users/OLD" }));
    };
    const { promise, popup } = await connectAndWait();
    await until(() => reads === 1);
    const conn = connection();
    post(popup, { state: "state-1", ok: true, connection: conn });
    assert.deepEqual(await promise, { outcome: "connected", connection: conn, switchedAccount: true });
    assert.equal(service.calls("POST /api/calendly/connect/complete").length, 0);
    assert.equal(popup.closed, true);
  });

  test("with an open live() stream that said the connection, connect() reads none before", async () => {
    // For a user who never connected that read answers 404, which browsers log as an error.
    const old = connection({ calendly_user_uri: "https://api.calendly.com/users/OLD" });
    let said = null; // what the live stream says
    script["GET /api/live"] = (req, res) => {
      const write = eventStream(res);
      write(sse("ready", { cursor: 1 }));
      write(sse("connection", { connection: said }));
    };
    for (const [before, switched] of [[null, false], [old, true]]) {
      said = before;
      win.opened.length = 0;
      service.requests.length = 0;
      const seen = [];
      const live = client.live({ onConnection: (c) => seen.push(c) });
      try {
        await until(() => seen.length === 1, { what: "the stream's connection event" });
        const { promise, popup } = await connectAndWait();
        const conn = connection();
        post(popup, { state: "state-1", ok: true, connection: conn });
        assert.deepEqual(await promise, { outcome: "connected", connection: conn, switchedAccount: switched });
        assert.equal(service.calls("GET /api/calendly/connection").length, 0);
      } finally {
        live.close();
      }
    }
    // Closed: connect() asks again.
    service.requests.length = 0;
    win.opened.length = 0;
    const { promise, popup } = await connectAndWait();
    post(popup, { state: "state-1", ok: true, connection: connection() });
    await promise;
    assert.equal(service.calls("GET /api/calendly/connection").length, 1);
  });

  test("messages from another origin, another window, another state or type are ignored", async () => {
    const { promise, popup } = await connectAndWait();
    const good = { state: "state-1", ok: true, connection: connection() };
    post(popup, good, "https://evil.example");
    post(popup, good, "null");
    win.message({ type: MESSAGE, ...good }, { origin: service.origin, source: new FakePopup() });
    win.message({ type: MESSAGE, ...good }, { origin: service.origin, source: null });
    post(popup, { ...good, state: "state-2" });
    post(popup, { ...good, state: undefined });
    win.message({ ...good, type: "other" }, { origin: service.origin, source: popup });
    win.message("calendly-connect", { origin: service.origin, source: popup });
    win.message(null, { origin: service.origin, source: popup });
    post(popup, { state: "state-1", ok: false }, "https://evil.example");
    assert.ok(await stillPending(promise, 100), "none of those settled the flow");
    assert.equal(popup.closed, false);

    post(popup, good);
    assert.equal((await promise).outcome, "connected");
  });

  test("popup blocked: PopupBlockedError, nothing sent", async () => {
    win.blockPopups = true;
    const error = await rejection(client.connect());
    assert.ok(error instanceof PopupBlockedError);
    assert.equal(error.code, "popup_blocked");
    assert.equal(error.status, 0);
    assert.ok(error.title && error.detail);
    assert.equal(service.requests.length, 0);
    assert.equal(win.listenerCount("message"), 0);
  });

  test("popup closed by the user: PopupClosedError after reading the status once more", async () => {
    const { promise, popup } = await connectAndWait();
    popup.closed = true;
    const error = await rejection(promise);
    assert.ok(error instanceof PopupClosedError);
    assert.equal(error.code, "popup_closed");
    assert.equal(service.calls("GET /api/calendly/connection").length, 2, "before, and after closing");
    assert.equal(win.listenerCount("message"), 0);
  });

  test("popup closed, but the connection was made meanwhile (message lost): resolves", async () => {
    const conn = connection();
    let reads = 0;
    script["GET /api/calendly/connection"] = (req, res) => {
      reads += 1;
      if (reads === 1) {
        problem(res, 404, "connection-not-found");
      } else {
        json(res, 200, conn);
      }
    };
    const { promise, popup } = await connectAndWait();
    await until(() => reads === 1);
    popup.closed = true;
    assert.deepEqual(await promise, { outcome: "connected", connection: conn, switchedAccount: false });
  });

  test("popup closed with an active connection that did not change: PopupClosedError", async () => {
    script["GET /api/calendly/connection"] = (req, res) => json(res, 200, connection());
    const { promise, popup } = await connectAndWait();
    await until(() => service.calls("GET /api/calendly/connection").length === 1);
    popup.closed = true;
    assert.ok((await rejection(promise)) instanceof PopupClosedError);
  });

  test("popup closed, connection re-made meanwhile (updated_at changed): resolves", async () => {
    let reads = 0;
    script["GET /api/calendly/connection"] = (req, res) => {
      reads += 1;
      // Active before and after, same Calendly user: only updated_at says it was re-made.
      json(res, 200, connection(reads === 1 ? {} : { updated_at: "2030-01-05T00:00:00Z" }));
    };
    const { promise, popup } = await connectAndWait();
    await until(() => reads === 1);
    popup.closed = true;
    const result = await promise;
    assert.equal(result.connection.updated_at, "2030-01-05T00:00:00Z");
    assert.equal(result.switchedAccount, false);
  });

  test("popup closed, another Calendly account connected meanwhile: resolves, switchedAccount", async () => {
    let reads = 0;
    script["GET /api/calendly/connection"] = (req, res) => {
      reads += 1;
      // Same updated_at on purpose: only the Calendly user differs.
      json(res, 200, connection(reads === 1 ? {} : { calendly_user_uri: "https://api.calendly.com/users/U2" }));
    };
    const { promise, popup } = await connectAndWait();
    await until(() => reads === 1);
    popup.closed = true;
    const result = await promise;
    assert.equal(result.connection.calendly_user_uri, "https://api.calendly.com/users/U2");
    assert.equal(result.switchedAccount, true);
  });

  test("denied at Calendly: AuthorizationDeniedError with the problem's words", async () => {
    const { promise, popup } = await connectAndWait();
    const error = {
      type: "urn:calendly-connect:problem:authorization-denied",
      title: "Access not granted",
      status: 400,
      detail: "Calendly did not authorize the connection (access_denied). Start connecting again.",
      request_id: "req-d",
    };
    post(popup, { state: "state-1", ok: false, error });
    const denied = await rejection(promise);
    assert.ok(denied instanceof AuthorizationDeniedError);
    assert.equal(denied.code, "denied");
    assert.equal(denied.title, "Access not granted");
    assert.equal(denied.detail, error.detail);
    assert.equal(denied.requestId, "req-d");
    assert.equal(denied.status, 0, "no HTTP answer: it came in a message");
    assert.deepEqual(denied.problem, error);
    assert.equal(popup.closed, true);
  });

  test("409 account-already-connected from complete: AccountInUseError", async () => {
    script["POST /api/calendly/connect/complete"] = (req, res) =>
      problem(res, 409, "account-already-connected", {
        title: "Calendly account already connected",
        detail: "That Calendly account is connected to another user.",
        request_id: "req-409",
      });
    const { promise, popup } = await connectAndWait();
    post(popup, { state: "state-1", ok: true, stage: "authorized", code: "c" });
    const error = await rejection(promise);
    assert.ok(error instanceof AccountInUseError);
    assert.equal(error.code, "account_in_use");
    assert.equal(error.status, 409);
    assert.equal(error.requestId, "req-409");
    assert.equal(error.title, "Calendly account already connected");
  });

  test("the service refuses the state at complete: AuthorizationExpiredError", async () => {
    script["POST /api/calendly/connect/complete"] = (req, res) =>
      problem(res, 400, "authorization-state-invalid", { title: "Invalid authorization request" });
    const { promise, popup } = await connectAndWait();
    post(popup, { state: "state-1", ok: true, stage: "authorized", code: "c" });
    const error = await rejection(promise);
    assert.ok(error instanceof AuthorizationExpiredError);
    assert.equal(error.status, 400);
  });

  test("expires_at passes without an answer: the popup closes, AuthorizationExpiredError", async () => {
    script["POST /api/calendly/connect"] = (req, res) =>
      json(res, 200, { authorization_url: AUTH_URL, state: "state-1", expires_at: inMs(250) });
    const { promise, popup } = await connectAndWait();
    const error = await rejection(promise);
    assert.ok(error instanceof AuthorizationExpiredError);
    assert.equal(error.code, "expired");
    assert.equal(popup.closeCount, 1);
    assert.equal(win.listenerCount("message"), 0);
  });

  test("abort: the popup closes, the promise rejects with the abort reason", async () => {
    const controller = new AbortController();
    const { promise, popup } = await connectAndWait({ signal: controller.signal });
    controller.abort();
    const error = await rejection(promise);
    assert.equal(error.name, "AbortError");
    assert.equal(popup.closed, true);
    assert.equal(win.listenerCount("message"), 0);

    const reason = new Error("user left");
    const early = await rejection(client.connect({ signal: AbortSignal.abort(reason) }));
    assert.equal(early, reason);
    assert.equal(win.opened.length, 1, "an aborted signal opens no popup");
  });

  test("a second connect() while one is pending focuses the popup and answers the same promise", async () => {
    const { promise, popup } = await connectAndWait();
    const again = client.connect();
    assert.equal(again, promise);
    assert.equal(win.opened.length, 1);
    assert.equal(popup.focusCount, 1);
    assert.equal(client.reconnect(), promise, "reconnect() joins it too");
    post(popup, { state: "state-1", ok: true, connection: connection() });
    await promise;
    // Settled: the next call starts afresh.
    const next = client.connect();
    next.catch(() => {});
    assert.notEqual(next, promise);
    assert.equal(win.opened.length, 2);
    win.opened[1].popup.closed = true;
    await rejection(next);
  });

  test("an authorization_url that is not http(s) is never opened", async () => {
    script["POST /api/calendly/connect"] = (req, res) =>
      json(res, 200, { authorization_url: "javascript:alert(1)", state: "s", expires_at: inMs(60000) });
    const promise = client.connect();
    const error = await rejection(promise);
    assert.ok(error instanceof ServiceError);
    const { popup } = win.opened[0];
    assert.equal(popup.location.href, "about:blank");
    assert.equal(popup.closed, true);
  });

  test("start refused (e.g. 503): the popup closes, the error is typed", async () => {
    script["POST /api/calendly/connect"] = (req, res) =>
      problem(res, 503, "storage-unavailable", { title: "Service temporarily unavailable" });
    const error = await rejection(client.connect());
    assert.ok(error instanceof ServiceError);
    assert.equal(error.status, 503);
    assert.equal(win.opened[0].popup.closed, true);
  });

  // ------------------------------------------------------------------ reconnect
  test("reconnect(): mended with the stored grant, no popup", async () => {
    const conn = connection();
    script["POST /api/calendly/reconnect"] = (req, res) =>
      json(res, 200, { outcome: "reconnected", connection: conn });
    assert.deepEqual(await client.reconnect(), {
      outcome: "reconnected",
      connection: conn,
      switchedAccount: false,
    });
    assert.equal(win.opened.length, 0);
    const [request] = service.calls("POST /api/calendly/reconnect");
    assert.match(request.body.completion_challenge, /^[A-Za-z0-9_-]{43}$/);
  });

  test("reconnect(): authorization_required opens the popup at the authorization URL", async () => {
    script["POST /api/calendly/reconnect"] = (req, res) =>
      json(res, 200, {
        outcome: "authorization_required",
        authorization_url: AUTH_URL,
        state: "state-r",
        expires_at: inMs(FLOW_MS),
        connection: connection({ status: "needs_reauth" }),
      });
    const promise = client.reconnect();
    await until(() => win.opened.length === 1, { what: "the popup" });
    const { popup, url, features } = win.opened[0];
    assert.equal(url, AUTH_URL);
    assert.equal(features, "popup,width=560,height=760");
    const conn = connection();
    post(popup, { state: "state-1", ok: true, connection: conn }); // another flow's state
    assert.ok(await stillPending(promise));
    post(popup, { state: "state-r", ok: true, connection: conn });
    assert.deepEqual(await promise, { outcome: "reconnected", connection: conn, switchedAccount: false });
    assert.equal(popup.closed, true);
  });

  test("reconnect(): popup blocked, then continue() from a new click finishes it", async () => {
    script["POST /api/calendly/reconnect"] = (req, res) =>
      json(res, 200, {
        outcome: "authorization_required",
        authorization_url: AUTH_URL,
        state: "state-r",
        expires_at: inMs(FLOW_MS),
        connection: null,
      });
    script["POST /api/calendly/connect/complete"] = (req, res) =>
      json(res, 200, { connection: connection(), switched_account: true });
    win.blockPopups = true;
    const blocked = await rejection(client.reconnect());
    assert.ok(blocked instanceof PopupBlockedError);
    assert.equal(typeof blocked.continue, "function");

    // Still blocked on the next click: another PopupBlockedError that can continue too.
    const again = await rejection(blocked.continue());
    assert.ok(again instanceof PopupBlockedError);

    win.blockPopups = false;
    const promise = again.continue();
    assert.equal(win.opened.length, 1, "continue() opens the popup synchronously");
    const { popup, url } = win.opened[0];
    assert.equal(url, AUTH_URL);
    post(popup, { state: "state-r", ok: true, stage: "authorized", code: "code-r" });
    assert.deepEqual(await promise, {
      outcome: "reconnected",
      connection: connection(),
      switchedAccount: true,
    });

    assert.equal(service.calls("POST /api/calendly/reconnect").length, 1, "the same authorization");
    const [reconnect] = service.calls("POST /api/calendly/reconnect");
    const [complete] = service.calls("POST /api/calendly/connect/complete");
    assert.equal(complete.body.state, "state-r");
    assert.equal(complete.body.code, "code-r");
    assert.equal(sha256Base64url(complete.body.completion_verifier), reconnect.body.completion_challenge);
  });

  test("reconnect(): continue() after expires_at rejects AuthorizationExpiredError", async () => {
    script["POST /api/calendly/reconnect"] = (req, res) =>
      json(res, 200, {
        outcome: "authorization_required",
        authorization_url: AUTH_URL,
        state: "state-r",
        expires_at: inMs(150),
      });
    win.blockPopups = true;
    const blocked = await rejection(client.reconnect());
    assert.ok(blocked instanceof PopupBlockedError);
    await new Promise((resolve) => setTimeout(resolve, 200));
    win.blockPopups = false;
    const error = await rejection(blocked.continue());
    assert.ok(error instanceof AuthorizationExpiredError);
    assert.equal(win.opened.length, 0);
  });

  test("reconnect(): 409 reauthorization-required is a ServiceError with the problem", async () => {
    script["POST /api/calendly/reconnect"] = (req, res) =>
      problem(res, 409, "reauthorization-required", { title: "Calendly needs to be authorized again" });
    const error = await rejection(client.reconnect());
    assert.ok(error instanceof ServiceError);
    assert.equal(error.status, 409);
    assert.equal(error.title, "Calendly needs to be authorized again");
  });
});
