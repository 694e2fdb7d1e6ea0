// Live updates over Server-Sent Events, read with fetch: EventSource cannot send a bearer token.

/**
 * A text/event-stream parser (WHATWG HTML, "Server-sent events"): LF, CR or CRLF line ends
 * (also split across chunks), multi-line data, comments, `id` and `retry`.
 * `onEvent({type, data, lastEventId})` per dispatched event; `onComment(text)` per comment.
 */
export class SseParser {
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

const MIN_DELAY = 1000;
const MAX_DELAY = 10000;
const UNAVAILABLE_DELAY = 30000;
// The server sends a comment at least every 15 s; silence for this long means a dead link.
const SILENCE_LIMIT = 45000;

function jittered(base) {
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

/**
 * One resumable stream from GET /api/live.
 * - `token()`: the bearer token; `renew()`: called on 401, answers whether to try again.
 * - `onEvent(type, payload, {resync})`: parsed JSON of each event; `resync` on a `ready` that
 *   started without a cursor (anything before it may have been missed).
 * - `onState(state)`: "connecting" | "live" | "reconnecting" | "unavailable" | "offline" | "stopped".
 * The server ends a stream when its token expires (an `expired` event first): the client then
 * renews the token at once and resumes from its last id, without waiting to be refused.
 */
export class LiveClient {
  constructor({ token, renew, onEvent, onState, path = "/api/live" }) {
    this.token = token;
    this.renew = renew;
    this.onEvent = onEvent;
    this.onState = onState;
    this.path = path;
    this.lastId = null;
    this.attempt = 0;
    this.serverRetry = null;
    this.running = false;
    this.renewed = false;
    this.expired = false;
    this.controller = null;
    this.wake = null;
    this.state = "stopped";
    this.handleOnline = () => this.wake && this.wake();
    this.handleOffline = () => this.setState("offline");
  }

  start() {
    if (this.running) {
      return;
    }
    this.running = true;
    window.addEventListener("online", this.handleOnline);
    window.addEventListener("offline", this.handleOffline);
    this.loop();
  }

  stop() {
    this.running = false;
    window.removeEventListener("online", this.handleOnline);
    window.removeEventListener("offline", this.handleOffline);
    if (this.controller) {
      this.controller.abort();
    }
    if (this.wake) {
      this.wake();
    }
    this.setState("stopped");
  }

  setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.onState(state);
    }
  }

  async loop() {
    while (this.running) {
      this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
      let outcome;
      try {
        outcome = await this.connectOnce();
      } catch {
        outcome = "failed";
      }
      if (!this.running) {
        break;
      }
      if (outcome === "closed" && this.expired) {
        // The token ran out: a fresh one now, then straight back (it counts as the renewal).
        if (await this.renew()) {
          this.renewed = true;
          continue;
        }
        this.stop();
        break;
      }
      if (outcome === "unauthorized") {
        // One fresh token per refusal; refused again before any `ready`: give up.
        if (!this.renewed && (await this.renew())) {
          this.renewed = true;
          continue;
        }
        this.stop();
        break;
      }
      if (outcome === "bad-cursor") {
        this.lastId = null; // start afresh; the `ready` that follows asks for a resync
      }
      let delay;
      if (outcome === "unavailable") {
        this.setState("unavailable");
        delay = UNAVAILABLE_DELAY;
      } else {
        const base = Math.min(MAX_DELAY, (this.serverRetry || MIN_DELAY) * 2 ** this.attempt);
        delay = jittered(base);
        this.setState(navigator.onLine === false ? "offline" : "reconnecting");
      }
      this.attempt += 1;
      await this.sleep(delay);
    }
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = () => {
        this.wake = null;
        done();
      };
    });
  }

  async connectOnce() {
    this.expired = false;
    const controller = new AbortController();
    this.controller = controller;
    const headers = { Accept: "text/event-stream" };
    const token = this.token();
    if (token) {
      headers.Authorization = `Bearer ${token}`;
    }
    const resumeFrom = this.lastId;
    if (resumeFrom) {
      headers["Last-Event-ID"] = resumeFrom;
    }
    let silence = null;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => controller.abort(), SILENCE_LIMIT);
    };
    watch();
    try {
      const response = await fetch(this.path, {
        headers,
        cache: "no-store",
        credentials: "same-origin",
        signal: controller.signal,
      });
      if (response.status === 401) {
        return "unauthorized";
      }
      if (response.status === 404 || response.status === 405) {
        return "unavailable";
      }
      if (response.status === 400 && resumeFrom) {
        return "bad-cursor";
      }
      const type = response.headers.get("content-type") || "";
      if (!response.ok || !type.startsWith("text/event-stream") || !response.body) {
        return "failed";
      }
      const parser = new SseParser({
        onEvent: (event) => this.dispatch(event, resumeFrom === null),
        onComment: () => {},
        onRetry: (ms) => {
          this.serverRetry = Math.min(MAX_DELAY, Math.max(MIN_DELAY, ms));
        },
      });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          parser.push(decoder.decode());
          parser.end();
          return "closed";
        }
        watch();
        parser.push(decoder.decode(value, { stream: true }));
      }
    } finally {
      clearTimeout(silence);
      if (this.controller === controller) {
        this.controller = null;
      }
    }
  }

  dispatch(event, startedWithoutCursor) {
    if (event.lastEventId !== null) {
      this.lastId = event.lastEventId === "" ? null : event.lastEventId;
    }
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      return; // not ours to understand; the stream goes on
    }
    if (event.type === "expired") {
      this.expired = true; // the stream ends next; `loop` renews the token
      return;
    }
    if (event.type === "ready") {
      this.attempt = 0;
      this.renewed = false;
      const cursor = payload && payload.cursor;
      if (this.lastId === null && Number.isSafeInteger(cursor) && cursor >= 0) {
        this.lastId = String(cursor);
      }
      this.setState("live");
    }
    try {
      this.onEvent(event.type, payload, { resync: event.type === "ready" && startedWithoutCursor });
    } catch (error) {
      // A rendering bug must not tear the stream down.
      console.error(error);
    }
  }
}
