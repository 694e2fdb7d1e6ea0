// calendly-connect client: lets a host web app connect its user's own Calendly account through the
// calendly-connect service, list their meetings and follow changes live.
//
// One ES module, no dependencies. It runs in modern browsers and imports in Node 20 (tests).
// The service serves this file byte for byte at BASE/client/v1/calendly-connect.js.
//
// Shape of the module, top to bottom: errors, problem details → errors, small helpers, the
// Server-Sent-Events parser, the HTTP layer, the popup flow, the live stream, and
// createCalendlyConnect() which wires them together.

const MESSAGE_TYPE = "calendly-connect";
const DEFAULT_POPUP = { name: "calendly-connect", width: 560, height: 760 };
// How often a pending popup is checked for having been closed by the user.
const POPUP_CLOSED_POLL_MS = 500;
// When the service gives no usable expires_at, an authorization lasts this long (contract: ~10 min).
const DEFAULT_AUTHORIZATION_MS = 10 * 60 * 1000;

// ====================================================================== errors

/**
 * Base class of every error this client rejects with. `code` says what happened, `title` and
 * `detail` are worded for the user, `problem` is the service's RFC 9457 problem details (or
 * null), `status` the HTTP status (0 when there was no HTTP answer), `requestId` the id to quote
 * when reporting a service failure.
 */
export class CalendlyConnectError extends Error {
  /**
   * @param {string} [message]
   * @param {{status?: number, problem?: object | null, requestId?: string | null,
   *          title?: string, detail?: string | null, cause?: unknown}} [options]
   */
  constructor(message, options = {}) {
    const title = options.title || message || "Something went wrong";
    const detail = options.detail ?? null;
    super(
      message || (detail ? `${title}: ${detail}` : title),
      options.cause === undefined ? undefined : { cause: options.cause },
    );
    this.name = new.target.name;
    this.code = "service";
    this.status = typeof options.status === "number" ? options.status : 0;
    this.problem = options.problem ?? null;
    this.requestId = options.requestId ?? null;
    this.title = title;
    this.detail = detail;
  }
}

/**
 * The browser refused to open the Calendly popup. `continue()`, called from a NEW click
 * handler, opens it for the same authorization and carries on (the promise it answers is the
 * one the blocked call would have answered).
 */
export class PopupBlockedError extends CalendlyConnectError {
  #resume;

  constructor(message, options = {}) {
    super(message, options);
    this.code = "popup_blocked";
    this.#resume = typeof options.resume === "function" ? options.resume : null;
  }

  /**
   * Open the popup again, from a click handler.
   * @param {{signal?: AbortSignal}} [options]
   */
  continue(options) {
    if (!this.#resume) {
      return Promise.reject(new TypeError("This PopupBlockedError cannot be continued"));
    }
    return this.#resume(options);
  }
}

/** The user closed the Calendly popup before connecting finished. */
export class PopupClosedError extends CalendlyConnectError {
  constructor(message, options) {
    super(message, options);
    this.code = "popup_closed";
  }
}

/** The user did not grant access at Calendly (problem `authorization-denied`). */
export class AuthorizationDeniedError extends CalendlyConnectError {
  constructor(message, options) {
    super(message, options);
    this.code = "denied";
  }
}

/** That Calendly account is already connected to another user (409 `account-already-connected`). */
export class AccountInUseError extends CalendlyConnectError {
  constructor(message, options) {
    super(message, options);
    this.code = "account_in_use";
  }
}

/**
 * The authorization request ran out of time, or the service refused its state
 * (`authorization-state-invalid`: unknown, used, expired, or a wrong verifier). Start again.
 */
export class AuthorizationExpiredError extends CalendlyConnectError {
  constructor(message, options) {
    super(message, options);
    this.code = "expired";
  }
}

/** No token from getToken, or the service refused the token even after a refreshed one. */
export class NotAuthenticatedError extends CalendlyConnectError {
  constructor(message, options) {
    super(message, options);
    this.code = "not_authenticated";
  }
}

/** The service could not be reached at all (status 0). */
export class NetworkError extends CalendlyConnectError {
  constructor(message, options) {
    super(message, options);
    this.code = "network";
  }
}

/** Any other failure the service reported (or an answer this client could not use). */
export class ServiceError extends CalendlyConnectError {
  constructor(message, options) {
    super(message, options);
    this.code = "service";
  }
}

// Problem `type` slug → error class; anything else is a ServiceError.
const ERROR_BY_SLUG = {
  "not-authenticated": NotAuthenticatedError,
  "authorization-denied": AuthorizationDeniedError,
  "account-already-connected": AccountInUseError,
  "authorization-state-invalid": AuthorizationExpiredError,
};

// What to show when a problem body says nothing better.
const FALLBACK = {
  400: ["The request was not accepted", "Check what you entered and try again."],
  401: ["Not signed in", "Your session has ended. Sign in again."],
  403: ["Not allowed", "You are not allowed to do this."],
  404: ["Not found", "This is not available here."],
  409: ["Changed meanwhile", "Something changed in the meantime. Reload and try again."],
  429: ["Too many requests", "Wait a moment and try again."],
  500: ["Something went wrong", "The service had a problem. Try again in a moment."],
  502: ["Calendly did not answer properly", "Try again in a moment."],
  503: ["Service temporarily unavailable", "Try again in a moment."],
};

function fallbackFor(status) {
  if (FALLBACK[status]) {
    return FALLBACK[status];
  }
  if (status >= 500) {
    return FALLBACK[500];
  }
  if (status === 0) {
    return ["Something went wrong", "Try again in a moment."];
  }
  return ["The request failed", `The service answered ${status}.`];
}

/** A trimmed, length-capped string, or null: problem texts end up in UIs. */
function plain(value, limit = 400) {
  if (typeof value !== "string") {
    return null;
  }
  const trimmed = value.trim();
  if (trimmed === "") {
    return null;
  }
  return trimmed.length > limit ? `${trimmed.slice(0, limit - 1)}…` : trimmed;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** The part of a problem `type` after its last ":" (or "/", should it ever be a URL). */
function problemSlug(problem) {
  const type = isObject(problem) && typeof problem.type === "string" ? problem.type : "";
  return type.slice(Math.max(type.lastIndexOf(":"), type.lastIndexOf("/")) + 1);
}

/**
 * The typed error for a problem-details object. `status` is the HTTP status it came with
 * (0: it came from the popup's message, not from an HTTP answer).
 */
function errorFromProblem(status, body, requestIdHeader = null) {
  const problem = isObject(body) ? body : null;
  const [fallbackTitle, fallbackDetail] = fallbackFor(
    status || (problem && typeof problem.status === "number" ? problem.status : 0),
  );
  let detail = plain(problem && problem.detail);
  if (problem && Array.isArray(problem.errors)) {
    // Validation problems name each rejected parameter; keep those words.
    const messages = problem.errors
      .map((item) => (isObject(item) ? plain(item.message, 160) : null))
      .filter(Boolean);
    if (messages.length > 0) {
      detail = [detail, ...messages].filter(Boolean).join(" ");
    }
  }
  const slug = problemSlug(problem);
  const ErrorClass =
    ERROR_BY_SLUG[slug] || (status === 401 ? NotAuthenticatedError : ServiceError);
  return new ErrorClass(undefined, {
    status,
    problem,
    requestId: plain(problem && problem.request_id, 128) || requestIdHeader,
    title: plain(problem && problem.title, 160) || fallbackTitle,
    detail: detail || fallbackDetail,
  });
}

async function errorFromResponse(response) {
  let body = null;
  try {
    const text = await response.text();
    if ((response.headers.get("content-type") || "").includes("json") && text) {
      body = JSON.parse(text);
    }
  } catch {
    body = null; // an unreadable error body still gets a readable error
  }
  return errorFromProblem(response.status, body, plain(response.headers.get("x-request-id"), 128));
}

function notSignedIn(cause) {
  return new NotAuthenticatedError(undefined, {
    title: "Not signed in",
    detail: "Your session has ended. Sign in again.",
    cause,
  });
}

function unexpectedAnswer(status, what) {
  return new ServiceError(undefined, {
    status,
    title: "Unexpected answer",
    detail: `The service sent ${what}.`,
  });
}

// ===================================================================== helpers

function abortReason(signal) {
  return signal.reason ?? new DOMException("The operation was aborted.", "AbortError");
}

function throwIfAborted(signal) {
  if (signal && signal.aborted) {
    throw abortReason(signal);
  }
}

/** Calls a host callback; a bug in it is reported but never breaks this client. */
function safely(callback, ...args) {
  if (typeof callback !== "function") {
    return;
  }
  try {
    callback(...args);
  } catch (error) {
    if (typeof globalThis.reportError === "function") {
      globalThis.reportError(error);
    } else {
      console.error(error);
    }
  }
}

function base64url(bytes) {
  let binary = "";
  for (const byte of bytes) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * A completion verifier (32 random bytes, base64url, 43 chars) and its challenge
 * base64url(SHA-256(verifier)): only this page, holding the verifier, can complete the hand-off.
 */
async function completionPair() {
  const crypto = globalThis.crypto;
  if (!crypto || typeof crypto.getRandomValues !== "function" || !crypto.subtle) {
    // crypto.subtle exists only in secure contexts (https, or http://localhost).
    throw new ServiceError(undefined, {
      title: "This page cannot connect Calendly",
      detail: "The browser's Web Crypto is unavailable here; the page must be served over https.",
    });
  }
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(32)));
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return { verifier, challenge: base64url(new Uint8Array(digest)) };
}

/** The service's base URL, absolute, without query, fragment or trailing slash. */
function normalizeBase(url) {
  if (typeof url !== "string" || url.trim() === "") {
    throw new TypeError("createCalendlyConnect: `url` (the service's base URL) is required");
  }
  let parsed;
  try {
    // A relative URL ("/calendly") is taken relative to the page, in a browser.
    parsed = new URL(url.trim(), globalThis.location ? globalThis.location.href : undefined);
  } catch {
    throw new TypeError(`createCalendlyConnect: \`url\` is not a URL: ${url}`);
  }
  if (parsed.protocol !== "https:" && parsed.protocol !== "http:") {
    throw new TypeError("createCalendlyConnect: `url` must be an http(s) URL");
  }
  parsed.search = "";
  parsed.hash = "";
  return parsed.href.replace(/\/+$/, "");
}

/** The URL if it is http(s), else null: the popup must never be pointed at javascript: etc. */
function webUrl(value) {
  if (typeof value !== "string") {
    return null;
  }
  try {
    const parsed = new URL(value);
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function dateParam(name, value) {
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) {
      throw new TypeError(`meetings: \`${name}\` is an invalid Date`);
    }
    return value.toISOString();
  }
  if (typeof value === "string") {
    return value; // the service checks it (RFC 3339 with an offset)
  }
  throw new TypeError(`meetings: \`${name}\` must be a Date or an RFC 3339 string`);
}

// ========================================================== Server-Sent Events

/**
 * A text/event-stream parser (WHATWG HTML, "Server-sent events"): LF, CR or CRLF line ends
 * (also split across chunks), multi-line data, comments, `id` and `retry`, a leading BOM.
 * `onEvent({type, data, lastEventId})` per dispatched event; `onComment(text)` per comment
 * line; `onRetry(ms)` per valid `retry` field.
 */
export class SseParser {
  /**
   * @param {{onEvent: (event: {type: string, data: string, lastEventId: string | null}) => void,
   *          onComment?: (text: string) => void, onRetry?: (ms: number) => void}} handlers
   */
  constructor({ onEvent, onComment = () => {}, onRetry = () => {} }) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.onRetry = onRetry;
    this.buffer = "";
    this.started = false;
    this.data = [];
    this.type = "";
    // Persists across events, as the spec's "last event ID buffer" does; null: never set.
    this.lastEventId = null;
  }

  /** Feed decoded text. */
  push(chunk) {
    this.buffer += chunk;
    if (!this.started && this.buffer.length > 0) {
      this.started = true;
      if (this.buffer.charCodeAt(0) === 0xfeff) {
        this.buffer = this.buffer.slice(1);
      }
    }
    let start = 0;
    for (;;) {
      const lf = this.buffer.indexOf("\n", start);
      const cr = this.buffer.indexOf("\r", start);
      if (lf === -1 && cr === -1) {
        break;
      }
      let end;
      let next;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        if (cr === this.buffer.length - 1) {
          break; // a CR at the very end: wait, an LF may follow in the next chunk
        }
        end = cr;
        next = this.buffer[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else {
        end = lf;
        next = lf + 1;
      }
      this.line(this.buffer.slice(start, end));
      start = next;
    }
    this.buffer = this.buffer.slice(start);
  }

  /** The stream ended: a lone trailing CR ends its line; an unfinished event is discarded. */
  end() {
    if (this.buffer.endsWith("\r")) {
      this.line(this.buffer.slice(0, -1));
    }
    this.buffer = "";
    this.data = [];
    this.type = "";
  }

  /** @private */
  line(text) {
    if (text === "") {
      this.dispatch();
      return;
    }
    if (text.startsWith(":")) {
      this.onComment(text.slice(1).replace(/^ /, ""));
      return;
    }
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) {
      value = value.slice(1);
    }
    switch (field) {
      case "data":
        this.data.push(value);
        break;
      case "event":
        this.type = value;
        break;
      case "id":
        if (!value.includes("\0")) {
          this.lastEventId = value;
        }
        break;
      case "retry":
        if (/^\d+$/.test(value)) {
          this.onRetry(Number(value));
        }
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  /** @private */
  dispatch() {
    const data = this.data;
    const type = this.type || "message";
    this.data = [];
    this.type = "";
    if (data.length === 0) {
      return;
    }
    this.onEvent({ type, data: data.join("\n"), lastEventId: this.lastEventId });
  }
}

// ================================================================== HTTP layer

/**
 * JSON requests with the host's bearer token: one retry with a refreshed token on a 401,
 * problem details turned into typed errors. Shared by everything below.
 */
class Transport {
  constructor({ base, getToken, fetch }) {
    this.base = base;
    this.getToken = getToken;
    this.fetch = fetch;
    this.refreshing = null; // {refused, promise}: concurrent 401s share one refresh
  }

  /** The current token, or null. A throwing getToken counts as "not signed in". */
  async token() {
    let token;
    try {
      token = await this.getToken({ refresh: false });
    } catch (error) {
      throw notSignedIn(error);
    }
    return typeof token === "string" && token !== "" ? token : null;
  }

  /** A new token after `refused` was refused, or null (also when getToken fails). */
  refreshedToken(refused) {
    if (this.refreshing && this.refreshing.refused === refused) {
      return this.refreshing.promise;
    }
    const promise = (async () => {
      try {
        const token = await this.getToken({ refresh: true });
        return typeof token === "string" && token !== "" ? token : null;
      } catch {
        return null;
      }
    })();
    const entry = { refused, promise };
    this.refreshing = entry;
    const clear = () => {
      if (this.refreshing === entry) {
        this.refreshing = null;
      }
    };
    promise.then(clear, clear);
    return promise;
  }

  /** Answers the parsed JSON body (null for 204); throws a CalendlyConnectError or the abort reason. */
  async json(method, path, { body, signal, query } = {}) {
    throwIfAborted(signal);
    const token = await this.token();
    throwIfAborted(signal);
    if (!token) {
      throw notSignedIn();
    }
    let url = this.base + path;
    if (query && query.toString()) {
      url += `?${query}`;
    }
    let response = await this.send(method, url, token, body, signal);
    if (response.status === 401) {
      const fresh = await this.refreshedToken(token);
      throwIfAborted(signal);
      if (fresh && fresh !== token) {
        discard(response);
        response = await this.send(method, url, fresh, body, signal);
      }
    }
    if (!response.ok) {
      // A second 401 (or no new token) lands here as NotAuthenticatedError.
      throw await errorFromResponse(response);
    }
    if (response.status === 204) {
      return null;
    }
    try {
      return await response.json();
    } catch (error) {
      throwIfAborted(signal);
      throw unexpectedAnswer(response.status, "something unreadable");
    }
  }

  async send(method, url, token, body, signal) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
    }
    try {
      return await this.fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        // The bearer token authenticates. "same-origin": a page on the service's own origin
        // keeps and sends the service's HttpOnly OAuth binding cookie (set by connect and
        // reconnect), so the popup can finish the round trip by itself even when the browser
        // severs window.opener; a page on another origin sends and stores no cookies at all.
        credentials: "same-origin",
        cache: "no-store",
        signal,
      });
    } catch (error) {
      throwIfAborted(signal);
      throw new NetworkError(undefined, {
        title: "Can't reach the service",
        detail: "Check your network connection, then try again.",
        cause: error,
      });
    }
  }
}

/** Frees a response's connection when its body is not wanted. */
function discard(response) {
  try {
    const cancel = response.body && response.body.cancel();
    if (cancel && typeof cancel.catch === "function") {
      cancel.catch(() => {});
    }
  } catch {
    // nothing to free
  }
}

// ================================================================== popup flow

function popupFeatures(popup) {
  return `popup,width=${popup.width},height=${popup.height}`;
}

function isClosed(popup) {
  try {
    return popup.closed === true;
  } catch {
    return false;
  }
}

function closePopup(popup) {
  try {
    if (!popup.closed) {
      popup.close();
    }
  } catch {
    // already gone
  }
}

function focusPopup(popup) {
  try {
    popup.focus();
  } catch {
    // nothing to do: the window is still there
  }
}

/** Text for the seconds before Calendly loads, if the popup is still our blank window. */
function showOpening(popup) {
  try {
    // Reading a cross-origin window's document throws: a reused window already showing
    // another page is navigated in a moment anyway.
    if (popup.location.href !== "about:blank") {
      return;
    }
    popup.document.title = "Connecting to Calendly…";
    popup.document.body.textContent = "Opening Calendly…";
  } catch {
    // not ours to write into
  }
}

/**
 * Whether the connection read after the popup closed shows a connect that finished without
 * its message reaching us: active, and new or different compared with before the flow started.
 * An unknown "before" (its read failed) never counts as changed.
 */
function connectedMeanwhile(before, after) {
  if (!before.known || !isObject(after) || after.status !== "active") {
    return false;
  }
  const was = before.connection;
  return (
    !was ||
    was.status !== "active" ||
    was.updated_at !== after.updated_at ||
    was.calendly_user_uri !== after.calendly_user_uri
  );
}

/** Whether a connection reached without the service saying so belongs to another Calendly user. */
function switchedFrom(before, after) {
  const was = before.known ? before.connection : null;
  return Boolean(
    was &&
      was.calendly_user_uri &&
      after.calendly_user_uri &&
      was.calendly_user_uri !== after.calendly_user_uri,
  );
}

/** Checked {url, state, expiresAt} from a start or reconnect answer. */
function authorizationFrom(answer) {
  const url = webUrl(answer && answer.authorization_url);
  const state = answer && answer.state;
  if (!url || typeof state !== "string" || state === "") {
    throw new ServiceError(undefined, {
      status: 200,
      title: "Connecting could not start",
      detail: "The service answered without a usable Calendly address. Try again.",
    });
  }
  const at = Date.parse(answer.expires_at);
  return {
    url,
    state,
    expiresAt: Number.isNaN(at) ? Date.now() + DEFAULT_AUTHORIZATION_MS : at,
  };
}

function expiredError() {
  return new AuthorizationExpiredError(undefined, {
    title: "Connecting took too long",
    detail: "The Calendly approval was not finished in time. Start connecting again.",
  });
}

/**
 * Waits, with an open popup, for the outcome of one authorization. Resolves a ConnectResult;
 * rejects with a typed error or the abort reason. Always closes the popup and removes every
 * listener and timer when it settles.
 *
 * - `authorization`: {state, expiresAt, verifier} when the popup was opened at its URL
 *   (reconnect); otherwise `begin(signal)` answers it with a `navigateTo` URL for the popup
 *   (connect: the popup was opened blank, before the service answered).
 * - `before(signal)`: answers {known, connection}: the connection before this flow.
 */
function awaitPopup(flow) {
  const { transport, window, origin, popup, outcome, signal, authorization, begin, before } = flow;
  return new Promise((resolve, reject) => {
    const internal = new AbortController(); // ends our own requests when the flow settles
    let settled = false;
    let started = null; // {state, expiresAt, verifier} once known
    let decided = false; // a message was accepted: it alone settles the flow now
    let checkingClosed = false;
    let expiryTimer = null;
    let closedTimer = null;
    const beforePromise = before(internal.signal);

    const finish = (error, result) => {
      if (settled) {
        return;
      }
      settled = true;
      clearInterval(closedTimer);
      clearTimeout(expiryTimer);
      window.removeEventListener("message", onMessage);
      if (signal) {
        signal.removeEventListener("abort", onAbort);
      }
      internal.abort();
      closePopup(popup); // after a success found by reading the status, it may still show Calendly
      if (error) {
        reject(error);
      } else {
        resolve(result);
      }
    };

    const succeed = async (connection, switchedAccount) => {
      const snapshot = await beforePromise;
      finish(null, {
        outcome,
        connection,
        switchedAccount: switchedAccount ?? switchedFrom(snapshot, connection),
      });
    };

    function onAbort() {
      finish(abortReason(signal));
    }

    function onMessage(event) {
      if (settled || decided || !started) {
        return;
      }
      // Only our popup, on the service's origin, about the authorization we started.
      if (event.origin !== origin || event.source !== popup) {
        return;
      }
      const data = event.data;
      if (!isObject(data) || data.type !== MESSAGE_TYPE || data.state !== started.state) {
        return;
      }
      if (data.ok === true && isObject(data.connection)) {
        decide();
        succeed(data.connection); // the service completed it itself
      } else if (data.ok === true && data.stage === "authorized" && typeof data.code === "string") {
        decide();
        complete(data.code);
      } else if (data.ok === false) {
        finish(errorFromProblem(0, data.error));
      }
      // Any other shape is one this client does not know: ignored, the watch goes on.
    }

    function decide() {
      // From here the message decides, whatever the popup or the clock do meanwhile.
      decided = true;
      clearInterval(closedTimer);
      clearTimeout(expiryTimer);
    }

    function complete(code) {
      // The service's answer settles the flow.
      transport
        .json("POST", "/api/calendly/connect/complete", {
          body: { state: started.state, code, completion_verifier: started.verifier },
          signal: internal.signal,
        })
        .then((answer) => {
          if (!isObject(answer) || !isObject(answer.connection)) {
            throw unexpectedAnswer(200, "no connection");
          }
          finish(null, {
            outcome,
            connection: answer.connection,
            switchedAccount: answer.switched_account === true,
          });
        })
        .catch((error) => finish(error));
    }

    async function onClosed() {
      // Closed without a message reaching us: the message may have been lost (or the link to
      // the popup severed), so the connection is read once before calling it a cancel.
      checkingClosed = true;
      clearInterval(closedTimer);
      let after = null;
      let cause;
      try {
        after = await getConnection(transport, internal.signal);
      } catch (error) {
        cause = error;
      }
      const snapshot = await beforePromise;
      if (settled || decided) {
        return; // the message arrived meanwhile and decided
      }
      if (connectedMeanwhile(snapshot, after)) {
        finish(null, { outcome, connection: after, switchedAccount: switchedFrom(snapshot, after) });
        return;
      }
      finish(
        new PopupClosedError(undefined, {
          title: "Calendly was not connected",
          detail: "The Calendly window was closed before connecting finished.",
          cause,
        }),
      );
    }

    function startWatchingClosed() {
      clearInterval(closedTimer);
      closedTimer = setInterval(() => {
        if (!settled && !decided && !checkingClosed && isClosed(popup)) {
          onClosed();
        }
      }, POPUP_CLOSED_POLL_MS);
    }

    function startExpiryTimer() {
      clearTimeout(expiryTimer);
      // (Clamped: setTimeout fires at once for delays over 2^31-1 ms.)
      const left = Math.min(2 ** 31 - 1, Math.max(0, started.expiresAt - Date.now()));
      expiryTimer = setTimeout(() => finish(expiredError()), left);
    }

    startWatchingClosed();
    window.addEventListener("message", onMessage);
    if (signal) {
      signal.addEventListener("abort", onAbort, { once: true });
      if (signal.aborted) {
        onAbort();
        return;
      }
    }

    if (authorization) {
      started = authorization;
      startExpiryTimer();
      return;
    }
    Promise.resolve()
      .then(() => begin(internal.signal))
      .then((begun) => {
        if (settled) {
          return;
        }
        started = begun;
        try {
          popup.location.href = begun.navigateTo;
        } catch {
          // Closed meanwhile: the closed watch reports it.
        }
        startExpiryTimer();
      })
      .catch((error) => finish(error));
  });
}

/** GET the connection: null when the user never connected (404 `connection-not-found`). */
async function getConnection(transport, signal) {
  try {
    const connection = await transport.json("GET", "/api/calendly/connection", { signal });
    if (!isObject(connection)) {
      throw unexpectedAnswer(200, "no connection");
    }
    return connection;
  } catch (error) {
    // Only the service's own "never connected" is null; any other 404 (a wrong base URL,
    // a proxy) stays an error.
    if (error instanceof ServiceError && problemSlug(error.problem) === "connection-not-found") {
      return null;
    }
    throw error;
  }
}

// ================================================================= live stream

const LIVE_MIN_DELAY = 1000;
const LIVE_MAX_DELAY = 30000;
// The server sends a comment at least once per heartbeat interval, which its `ready` event
// gives (`heartbeat`, in seconds): silence for three intervals means a dead link. Until a
// stream has said it, and never less: 45 s. At most 15 minutes, whatever a server says.
const LIVE_SILENCE_LIMIT = 45000;
const LIVE_SILENCE_MAX = 15 * 60 * 1000;

/** The silence a stream whose heartbeat is `seconds` may keep before it counts as dead. */
function silenceLimitFor(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds <= 0) {
    return LIVE_SILENCE_LIMIT;
  }
  return Math.min(LIVE_SILENCE_MAX, Math.max(LIVE_SILENCE_LIMIT, 3000 * seconds));
}

/** 0.75–1.25 × base: many pages dropped at once must not come back in step. */
function jittered(base) {
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

function retryAfterMs(response) {
  const value = response.headers.get("retry-after");
  if (value && /^\d+$/.test(value.trim())) {
    return Number(value.trim()) * 1000;
  }
  return 0;
}

/**
 * One resumable GET /api/live stream, read with fetch (EventSource cannot send a bearer token).
 * States: "connecting" (first try, or straight back with a fresh token), "open" (after the
 * server's `ready`), "retrying" (after a failure, during the back-off and the next try),
 * "closed" (closed by the host, or given up: onError tells why).
 */
class LiveStream {
  constructor({ transport, window, handlers }) {
    this.transport = transport;
    this.window = window;
    this.handlers = handlers || {};
    this.state = "connecting";
    this.closedByHost = false;
    this.done = false;
    this.lastId = null; // resume point: the last event id (or the `ready` cursor)
    this.silenceLimit = LIVE_SILENCE_LIMIT; // from the last `ready` event's heartbeat
    this.attempt = 0; // failures since the last healthy stream
    this.serverRetry = null; // the stream's `retry:` field, if any
    this.freshToken = null; // a token from a refresh, for the next try
    this.refreshedSinceReady = false;
    this.controller = null;
    this.wake = null;
    this.onOnline = () => this.wake && this.wake();
    // {connection} once the stream that is open now has said the connection (the service
    // says it after every `ready`, and again on every change); null otherwise.
    this.connectionSeen = null;
  }

  start() {
    if (this.window && typeof this.window.addEventListener === "function") {
      this.window.addEventListener("online", this.onOnline);
    }
    // No callback for the initial "connecting": live() has not even returned yet.
    this.run();
  }

  /** Stops for good; no callback is called afterwards. */
  close() {
    if (this.closedByHost) {
      return;
    }
    this.closedByHost = true;
    this.state = "closed";
    this.stop();
  }

  stop() {
    this.done = true;
    this.connectionSeen = null;
    if (this.window && typeof this.window.removeEventListener === "function") {
      this.window.removeEventListener("online", this.onOnline);
    }
    if (this.controller) {
      this.controller.abort();
    }
    if (this.wake) {
      this.wake();
    }
  }

  call(name, value) {
    if (!this.closedByHost) {
      safely(this.handlers[name], value);
    }
  }

  setState(state) {
    if (this.state !== state && !this.closedByHost) {
      this.state = state;
      this.call("onStateChange", state);
    }
  }

  giveUp(error) {
    if (this.closedByHost) {
      return;
    }
    this.state = "closed";
    this.stop();
    this.call("onError", error);
    this.call("onStateChange", "closed");
  }

  async run() {
    while (!this.done) {
      let outcome;
      try {
        outcome = await this.once();
      } catch (error) {
        outcome = { kind: "failed", error };
      }
      this.connectionSeen = null; // that stream ended: what it said may be out of date
      if (this.done) {
        return;
      }
      if (outcome.kind === "expired" || outcome.kind === "unauthorized") {
        // The token ran out (the server said so) or was refused: a fresh one, then straight
        // back with the last id. Refused again before a `ready`: give up.
        const refusedTwice = outcome.kind === "unauthorized" && this.refreshedSinceReady;
        const fresh = refusedTwice ? null : await this.transport.refreshedToken(outcome.token);
        if (this.done) {
          return;
        }
        if (!fresh || (outcome.kind === "unauthorized" && fresh === outcome.token)) {
          this.giveUp(outcome.error || notSignedIn());
          return;
        }
        this.freshToken = fresh;
        this.refreshedSinceReady = true;
        this.setState("connecting");
        continue;
      }
      if (outcome.kind === "fatal") {
        this.giveUp(outcome.error);
        return;
      }
      if (outcome.kind === "bad-cursor") {
        this.lastId = null; // the resume point was refused: start from now
      }
      const base = Math.min(
        LIVE_MAX_DELAY,
        (this.serverRetry ?? LIVE_MIN_DELAY) * 2 ** Math.min(this.attempt, 16),
      );
      const delay = Math.max(Math.min(LIVE_MAX_DELAY, jittered(base)), outcome.retryAfter || 0);
      this.attempt += 1;
      this.setState("retrying");
      if (outcome.error) {
        this.call("onError", outcome.error);
      }
      await this.sleep(delay);
    }
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done; // close(), or the browser coming back online, cuts the wait short
      if (this.done) {
        done();
      }
    });
  }

  /** One request and its stream. Answers {kind, error?, token?, retryAfter?}. */
  async once() {
    // A new attempt: until its own `ready` says otherwise, the default silence limit (a server
    // that hangs before it must not get the last stream's longer allowance).
    this.silenceLimit = LIVE_SILENCE_LIMIT;
    let token = this.freshToken;
    this.freshToken = null;
    if (token === null) {
      try {
        token = await this.transport.token();
      } catch (error) {
        return { kind: "fatal", error };
      }
    }
    if (this.done) {
      return { kind: "closed" };
    }
    if (!token) {
      return { kind: "fatal", error: notSignedIn() };
    }
    const controller = new AbortController();
    this.controller = controller;
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token}` };
    const resumeFrom = this.lastId;
    if (resumeFrom !== null) {
      headers["Last-Event-ID"] = resumeFrom;
    }
    let silent = false;
    let silence = null;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => {
        silent = true;
        controller.abort();
      }, this.silenceLimit);
    };
    watch();
    try {
      let response;
      try {
        response = await this.transport.fetch(this.transport.base + "/api/live", {
          headers,
          credentials: "same-origin", // as every request: cookies on the service's own origin only
          cache: "no-store",
          signal: controller.signal,
        });
      } catch (cause) {
        return { kind: "failed", error: lostStream(cause, silent) };
      }
      if (response.status === 401) {
        return { kind: "unauthorized", token, error: await errorFromResponse(response) };
      }
      if (!response.ok) {
        const error = await errorFromResponse(response);
        const status = response.status;
        if (status === 400 && resumeFrom !== null) {
          return { kind: "bad-cursor", error };
        }
        if (status >= 500 || status === 408 || status === 429) {
          return { kind: "failed", error, retryAfter: retryAfterMs(response) };
        }
        return { kind: "fatal", error }; // 403, 404…: trying again will not help
      }
      const type = response.headers.get("content-type") || "";
      if (!type.startsWith("text/event-stream") || !response.body) {
        discard(response);
        return { kind: "failed", error: unexpectedAnswer(response.status, "no event stream") };
      }
      return await this.read(response.body, token, watch, () => silent);
    } finally {
      clearTimeout(silence);
      if (this.controller === controller) {
        this.controller = null;
      }
    }
  }

  async read(body, token, watch, wasSilent) {
    let expired = false;
    const parser = new SseParser({
      onEvent: (event) => {
        if (this.dispatch(event) === "expired") {
          expired = true;
        }
      },
      onRetry: (ms) => {
        this.serverRetry = Math.min(LIVE_MAX_DELAY, Math.max(10, ms));
      },
    });
    const reader = body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this.done) {
          return { kind: "closed" };
        }
        if (done) {
          parser.push(decoder.decode());
          parser.end();
          // A stream that ends by itself (e.g. the server's storage is down) is retried.
          return expired ? { kind: "expired", token } : { kind: "ended" };
        }
        parser.push(decoder.decode(value, { stream: true }));
        watch(); // after the events: a `ready` may have just said the heartbeat's interval
        if (expired) {
          // Nothing more may come on an expired stream: do not wait for the server to end it.
          reader.cancel().catch(() => {});
          return { kind: "expired", token };
        }
      }
    } catch (cause) {
      if (this.done) {
        return { kind: "closed" };
      }
      return { kind: "failed", error: lostStream(cause, wasSilent()) };
    }
  }

  /** Hands one event to the host. Answers "expired" for the server's token-expiry notice. */
  dispatch(event) {
    if (this.done) {
      return null;
    }
    if (event.lastEventId !== null) {
      this.lastId = event.lastEventId === "" ? null : event.lastEventId;
    }
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      return null; // not ours to understand; the stream goes on
    }
    switch (event.type) {
      case "ready": {
        // A healthy stream: the back-off starts over, and so does the right to one refresh.
        this.attempt = 0;
        this.refreshedSinceReady = false;
        this.connectionSeen = null;
        this.silenceLimit = silenceLimitFor(isObject(payload) ? payload.heartbeat : null);
        const cursor = isObject(payload) ? payload.cursor : null;
        if (this.lastId === null && Number.isSafeInteger(cursor) && cursor >= 0) {
          this.lastId = String(cursor);
        }
        this.setState("open");
        return null;
      }
      case "connection":
        if (isObject(payload)) {
          const connection = isObject(payload.connection) ? payload.connection : null;
          this.connectionSeen = { connection };
          this.call("onConnection", connection);
        }
        return null;
      case "meetings":
        if (isObject(payload) && Array.isArray(payload.meetings)) {
          for (const meeting of payload.meetings) {
            if (this.done) {
              break; // closed from inside onMeeting
            }
            if (isObject(meeting)) {
              this.call("onMeeting", meeting);
            }
          }
        }
        return null;
      case "meeting":
        // One meeting per event, as the contract words it; the service sends `meetings`.
        if (isObject(payload)) {
          this.call("onMeeting", payload);
        }
        return null;
      case "expired":
        return "expired";
      default:
        return null;
    }
  }
}

function lostStream(cause, silent) {
  return new NetworkError(undefined, {
    title: "Live updates interrupted",
    detail: silent
      ? "The service went silent; reconnecting."
      : "The connection to the service was lost; reconnecting.",
    cause,
  });
}

// ====================================================================== client

/**
 * A client for one calendly-connect service.
 *
 * @param {object} options
 * @param {string} options.url The service's base URL (may include a path prefix).
 * @param {(context: {refresh: boolean}) => string | null | Promise<string | null>} options.getToken
 *   The host's bearer token; with `refresh: true` (after a 401 or an `expired` live event) a NEW
 *   token, or null when the user is signed out.
 * @param {typeof fetch} [options.fetch] Defaults to globalThis.fetch.
 * @param {Window} [options.window] For the popup and its message; defaults to globalThis.window.
 * @param {{name?: string, width?: number, height?: number}} [options.popup]
 * @returns {import("./calendly-connect.js").CalendlyConnect}
 */
export function createCalendlyConnect(options) {
  if (!isObject(options)) {
    throw new TypeError("createCalendlyConnect: options are required");
  }
  if (typeof options.getToken !== "function") {
    throw new TypeError("createCalendlyConnect: `getToken` must be a function");
  }
  const base = normalizeBase(options.url);
  const origin = new URL(base).origin;
  const fetchImpl =
    options.fetch ?? (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : null);
  if (typeof fetchImpl !== "function") {
    throw new TypeError("createCalendlyConnect: no fetch available; pass `fetch`");
  }
  const hostWindow = options.window ?? globalThis.window ?? null;
  const popupOptions = { ...DEFAULT_POPUP, ...(options.popup || {}) };
  const transport = new Transport({ base, getToken: options.getToken, fetch: fetchImpl });

  // The one connect/reconnect in progress: {popup, promise}. A second call gets its promise.
  let pending = null;
  // The live() streams not closed yet.
  const streams = new Set();

  /** {connection} as an open live stream said it last, or null when none has. */
  function liveConnection() {
    for (const stream of streams) {
      if (stream.done) {
        streams.delete(stream); // given up
      } else if (stream.connectionSeen) {
        return stream.connectionSeen;
      }
    }
    return null;
  }

  function track(entry) {
    pending = entry;
    const clear = () => {
      if (pending === entry) {
        pending = null;
      }
    };
    entry.promise.then(clear, clear);
    return entry.promise;
  }

  function joinPending() {
    if (pending.popup) {
      focusPopup(pending.popup);
    }
    return pending.promise;
  }

  function requireWindow() {
    if (!hostWindow || typeof hostWindow.open !== "function") {
      throw new TypeError("calendly-connect: connecting needs a browser window (pass `window`)");
    }
    return hostWindow;
  }

  function openPopup(url) {
    return requireWindow().open(url, popupOptions.name, popupFeatures(popupOptions));
  }

  function blocked(resume, title, detail) {
    return new PopupBlockedError(undefined, { title, detail, resume });
  }

  function status(opts = {}) {
    return getConnection(transport, opts.signal);
  }

  function connect(opts = {}) {
    if (pending) {
      return joinPending();
    }
    const signal = opts.signal;
    let popup;
    try {
      if (signal && signal.aborted) {
        return Promise.reject(abortReason(signal));
      }
      // Synchronously, inside the host's click handler: popup blockers allow only that.
      popup = openPopup("");
    } catch (error) {
      return Promise.reject(error);
    }
    if (!popup) {
      return Promise.reject(
        blocked(
          (again) => connect(again ?? opts),
          "The Calendly window was blocked",
          "Your browser blocked the pop-up. Allow pop-ups for this site, then try again.",
        ),
      );
    }
    showOpening(popup);
    const promise = awaitPopup({
      transport,
      window: hostWindow,
      origin,
      popup,
      outcome: "connected",
      signal,
      before: (internal) => {
        // An open live stream of this client has said it: no request (for a user who never
        // connected, the read answers 404, which browsers log as an error).
        const seen = liveConnection();
        if (seen) {
          return Promise.resolve({ known: true, connection: seen.connection });
        }
        return getConnection(transport, internal).then(
          (connection) => ({ known: true, connection }),
          () => ({ known: false, connection: null }),
        );
      },
      begin: async (internal) => {
        const { verifier, challenge } = await completionPair();
        const started = await transport.json("POST", "/api/calendly/connect", {
          body: { completion_challenge: challenge },
          signal: internal,
        });
        const authorization = authorizationFrom(started);
        return { ...authorization, verifier, navigateTo: authorization.url };
      },
    });
    return track({ popup, promise });
  }

  /** Opens the popup for an authorization the service already started (reconnect). */
  function openAuthorization(authorization, signal, entry) {
    if (signal && signal.aborted) {
      return Promise.reject(abortReason(signal));
    }
    if (Date.now() >= authorization.expiresAt) {
      return Promise.reject(expiredError());
    }
    const popup = openPopup(authorization.url);
    if (!popup) {
      return Promise.reject(
        blocked(
          (again) => continueAuthorization(authorization, (again && again.signal) ?? signal),
          "Calendly needs your approval again",
          "Continue to Calendly to approve access; a Calendly window opens.",
        ),
      );
    }
    entry.popup = popup;
    return awaitPopup({
      transport,
      window: hostWindow,
      origin,
      popup,
      outcome: "reconnected",
      signal,
      authorization,
      before: async () => ({ known: true, connection: authorization.before }),
    });
  }

  /** PopupBlockedError.continue() of a reconnect: called from a new click handler. */
  function continueAuthorization(authorization, signal) {
    if (pending) {
      return joinPending();
    }
    const entry = { popup: null, promise: null };
    try {
      entry.promise = openAuthorization(authorization, signal, entry);
    } catch (error) {
      entry.promise = Promise.reject(error);
    }
    return track(entry);
  }

  function reconnect(opts = {}) {
    if (pending) {
      return joinPending();
    }
    const signal = opts.signal;
    const entry = { popup: null, promise: null };
    entry.promise = (async () => {
      const { verifier, challenge } = await completionPair();
      const answer = await transport.json("POST", "/api/calendly/reconnect", {
        body: { completion_challenge: challenge },
        signal,
      });
      if (isObject(answer) && answer.outcome === "reconnected" && isObject(answer.connection)) {
        return { outcome: "reconnected", connection: answer.connection, switchedAccount: false };
      }
      if (!isObject(answer) || answer.outcome !== "authorization_required") {
        throw unexpectedAnswer(200, "an unknown reconnect outcome");
      }
      const authorization = {
        ...authorizationFrom(answer),
        verifier,
        before: isObject(answer.connection) ? answer.connection : null,
      };
      // After an await: browsers may no longer count this as part of the click, and block it.
      // The PopupBlockedError then carries continue() for the host's next click.
      return openAuthorization(authorization, signal, entry);
    })();
    return track(entry);
  }

  function disconnect(opts = {}) {
    return transport.json("DELETE", "/api/calendly/connection", { signal: opts.signal }).then(
      (answer) => {
        if (!isObject(answer)) {
          throw unexpectedAnswer(200, "no disconnect result");
        }
        return answer;
      },
    );
  }

  async function* meetings(filters = {}) {
    const query = new URLSearchParams();
    if (filters.status !== undefined) {
      query.set("status", filters.status);
    }
    if (filters.startsAfter !== undefined) {
      query.set("starts_after", dateParam("startsAfter", filters.startsAfter));
    }
    if (filters.startsBefore !== undefined) {
      query.set("starts_before", dateParam("startsBefore", filters.startsBefore));
    }
    if (filters.limit !== undefined) {
      query.set("limit", String(filters.limit));
    }
    let cursor = null;
    do {
      const pageQuery = new URLSearchParams(query);
      if (cursor !== null) {
        pageQuery.set("cursor", cursor);
      }
      const page = await transport.json("GET", "/api/meetings", {
        query: pageQuery,
        signal: filters.signal,
      });
      if (!isObject(page) || !Array.isArray(page.meetings)) {
        throw unexpectedAnswer(200, "no meetings list");
      }
      cursor = typeof page.next_cursor === "string" && page.next_cursor !== "" ? page.next_cursor : null;
      yield { meetings: page.meetings, nextCursor: cursor };
    } while (cursor !== null);
  }

  function live(handlers = {}) {
    const stream = new LiveStream({ transport, window: hostWindow, handlers });
    streams.add(stream);
    stream.start();
    return Object.freeze({
      close: () => {
        streams.delete(stream);
        stream.close();
      },
      get state() {
        return stream.state;
      },
    });
  }

  return Object.freeze({
    url: base,
    status,
    connect,
    reconnect,
    disconnect,
    meetings,
    live,
  });
}
