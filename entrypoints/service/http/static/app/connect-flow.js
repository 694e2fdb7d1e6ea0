// Connecting Calendly in a popup: the page never navigates away.
//
// The popup is opened synchronously inside the click handler (popup blockers allow that), then
// pointed at Calendly once the service answered. The outcome arrives as a postMessage from the
// callback page; polling the connection every 2 s covers a lost message (or an opener link the
// browser severed), and the connection is read again when the popup closes.

import { api, problemError } from "./api.js";
import { safeExternalUrl, text } from "./dom.js";
import { explain } from "./messages.js";
import { connection } from "./state.js";

const POPUP_NAME = "calendly-connect";
const POPUP_FEATURES = "popup,width=560,height=760";
const POLL_MS = 2000;
const MESSAGE_TYPE = "calendly-connect";

function snapshot(value) {
  return value
    ? {
        status: value.status,
        updated_at: value.updated_at,
        calendly_user_uri: value.calendly_user_uri,
      }
    : null;
}

function succeeded(before, after) {
  if (!after || after.status !== "active") {
    return false;
  }
  return (
    !before ||
    before.status !== "active" ||
    before.updated_at !== after.updated_at ||
    before.calendly_user_uri !== after.calendly_user_uri
  );
}

function blockedMessage() {
  return {
    tone: "error",
    title: "The Calendly window was blocked",
    detail: "Your browser blocked the pop-up. Allow pop-ups for this site, then try again.",
  };
}

class ConnectFlow {
  constructor() {
    this.listeners = new Set();
    this.pending = null; // {popup, before, phase: "starting" | "waiting"}
    this.busy = null; // "reconnect" | "disconnect" while such a request runs
    this.continueUrl = null; // an authorization URL waiting for a click (popup was blocked)
    this.message = null; // {id, tone, title, detail}
    this.timer = null;
    this.polling = false;
    this.nextId = 1;
    window.addEventListener("message", (event) => this.onMessage(event));
    connection.subscribe(() => this.onConnection());
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit() {
    for (const listener of [...this.listeners]) {
      listener();
    }
  }

  setMessage(message) {
    this.message = message ? { id: this.nextId++, ...message } : null;
    this.emit();
  }

  reset() {
    this.stopWaiting();
    this.busy = null;
    this.continueUrl = null;
    this.message = null;
    this.emit();
  }

  // ------------------------------------------------------------------ starting
  /** Connect: call from the click handler itself. */
  connect() {
    if (this.focusPending()) {
      return;
    }
    const popup = window.open("", POPUP_NAME, POPUP_FEATURES);
    if (!popup) {
      this.setMessage(blockedMessage());
      return;
    }
    this.prepare(popup);
    this.begin(popup, "starting");
    this.message = null;
    this.emit();
    api("/api/calendly/connect", { method: "POST" })
      .then((started) => {
        const url = safeExternalUrl(started && started.authorization_url);
        if (!url) {
          throw problemError(502, {
            title: "Connecting could not start",
            detail: "The service answered without a Calendly address. Try again.",
          });
        }
        if (!this.pending || this.pending.popup !== popup) {
          return; // canceled meanwhile
        }
        popup.location.href = url;
        this.pending.phase = "waiting";
        this.emit();
      })
      .catch((error) => {
        if (this.pending && this.pending.popup === popup) {
          this.stopWaiting({ close: true });
          this.setMessage({ tone: "error", ...explain(error) });
        }
      });
  }

  /** Reconnect with the stored grant; only when Calendly refuses it, approve in a popup. */
  async reconnect() {
    if (this.focusPending() || this.busy) {
      return;
    }
    this.busy = "reconnect";
    this.continueUrl = null;
    this.message = null;
    this.emit();
    const before = connection.value;
    try {
      const result = await api("/api/calendly/reconnect", { method: "POST" });
      if (result && result.outcome === "reconnected") {
        connection.set(result.connection || null);
        this.setMessage(reconnectedMessage(result.connection, before));
        return;
      }
      const url = safeExternalUrl(result && result.authorization_url);
      if (!url) {
        throw problemError(502, {
          title: "Reconnecting could not start",
          detail: "The service answered without a Calendly address. Try again.",
        });
      }
      // Browsers usually still count this as part of the click; if not, ask for one more.
      const popup = window.open(url, POPUP_NAME, POPUP_FEATURES);
      if (popup) {
        this.begin(popup, "waiting");
      } else {
        this.continueUrl = url;
        this.setMessage({
          tone: "info",
          title: "Calendly needs your approval again",
          detail: "Continue to Calendly to approve access; a Calendly window opens.",
        });
      }
    } catch (error) {
      this.setMessage({ tone: "error", ...explain(error) });
    } finally {
      this.busy = null;
      this.emit();
    }
  }

  /** After a blocked popup: the click on "Continue to Calendly" opens it. */
  continueInPopup() {
    const url = this.continueUrl;
    if (!url || this.focusPending()) {
      return;
    }
    const popup = window.open(url, POPUP_NAME, POPUP_FEATURES);
    if (!popup) {
      this.setMessage(blockedMessage());
      return;
    }
    this.continueUrl = null;
    this.message = null;
    this.begin(popup, "waiting");
  }

  async disconnect() {
    if (this.busy) {
      return;
    }
    this.busy = "disconnect";
    this.message = null;
    this.emit();
    try {
      const result = await api("/api/calendly/connection", { method: "DELETE" });
      connection.set((result && result.connection) || null);
      const details = ["Meetings you already received stay in your list."];
      if (result && result.revoke_failed) {
        details.push(
          "Calendly could not be told to revoke access, but this app no longer keeps any key to your Calendly account.",
        );
      }
      this.setMessage({ tone: "success", title: "Calendly disconnected", detail: details.join(" ") });
    } catch (error) {
      this.setMessage({ tone: "error", ...explain(error) });
    } finally {
      this.busy = null;
      this.emit();
    }
  }

  cancel() {
    this.stopWaiting({ close: true });
    this.setMessage({ tone: "info", title: "Connecting canceled", detail: "Nothing was changed." });
  }

  focusPending() {
    if (!this.pending) {
      return false;
    }
    if (this.pending.popup.closed) {
      this.stopWaiting();
      return false;
    }
    try {
      this.pending.popup.focus();
    } catch {
      // nothing to do: the window is still there
    }
    return true;
  }

  // ----------------------------------------------------------------- waiting
  prepare(popup) {
    try {
      // Still about:blank, and ours: say what is happening while the service answers.
      popup.document.title = "Connecting to Calendly…";
      popup.document.body.textContent = "Opening Calendly…";
    } catch {
      // A window of that name already showing another page: it is navigated in a moment.
    }
  }

  begin(popup, phase) {
    this.stopWaiting();
    this.pending = { popup, phase, before: snapshot(connection.value) };
    this.timer = setInterval(() => this.tick(), POLL_MS);
    this.emit();
  }

  stopWaiting({ close = false } = {}) {
    if (this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
    if (this.pending && close) {
      try {
        this.pending.popup.close();
      } catch {
        // already gone
      }
    }
    const had = this.pending !== null;
    this.pending = null;
    if (had) {
      this.emit();
    }
  }

  async tick() {
    const pending = this.pending;
    if (!pending || this.polling) {
      return;
    }
    const closed = pending.popup.closed;
    this.polling = true;
    try {
      await connection.load({ quiet: true }); // success is noticed in onConnection
    } catch {
      // A failed poll is retried on the next tick.
    } finally {
      this.polling = false;
    }
    if (closed && this.pending === pending) {
      // Closed, and neither the message nor the connection says it worked.
      this.stopWaiting();
      this.setMessage({
        tone: "info",
        title: "Calendly was not connected",
        detail: "The Calendly window was closed before connecting finished.",
      });
    }
  }

  onConnection() {
    if (this.pending && succeeded(this.pending.before, connection.value)) {
      this.succeed(connection.value);
    }
  }

  onMessage(event) {
    if (event.origin !== window.location.origin) {
      return;
    }
    const data = event.data;
    if (!data || typeof data !== "object" || data.type !== MESSAGE_TYPE) {
      return;
    }
    if (data.ok === true && data.connection && typeof data.connection === "object") {
      connection.set(data.connection); // may already finish the flow through onConnection
      if (this.pending) {
        this.succeed(data.connection);
      }
      return;
    }
    if (data.ok === false) {
      this.stopWaiting();
      const error = problemError(
        data.error && typeof data.error.status === "number" ? data.error.status : 400,
        data.error,
      );
      this.setMessage({ tone: "error", ...explain(error) });
      connection.load({ quiet: true }).catch(() => {});
    }
  }

  succeed(value) {
    const before = this.pending ? this.pending.before : null;
    const again = Boolean(before && before.status !== "disconnected");
    // Noticed by polling: the window may still show Calendly's last page. Its job is done.
    this.stopWaiting({ close: true });
    this.continueUrl = null;
    const who = text(value && value.email) || text(value && value.name);
    this.setMessage({
      tone: "success",
      title: again ? "Calendly reconnected" : "Calendly connected",
      detail: who
        ? `Connected as ${who}. New meetings will appear under Meetings.`
        : "New meetings will appear under Meetings.",
    });
  }
}

/** Was anything wrong with the connection (what the Calendar card warns about)? */
function wasHealthy(value) {
  return Boolean(
    value &&
      value.status === "active" &&
      (value.webhook_status === "active" || value.webhook_status === "unavailable_plan") &&
      !(value.maintenance && value.maintenance.failures > 0),
  );
}

/** After a Reconnect that needed no approval; `before`: the connection before it. */
function reconnectedMessage(value, before) {
  const webhook = value && value.webhook_status;
  const healthyBefore = wasHealthy(before);
  if (webhook === "unavailable_plan") {
    return {
      tone: "success",
      title: healthyBefore ? "Calendly connection checked" : "Calendly reconnected",
      detail: "This Calendly plan has no webhooks, so meetings will be kept in sync periodically.",
    };
  }
  if (webhook && webhook !== "active") {
    return {
      tone: "info",
      title: "Calendly reconnected, but updates are not flowing yet",
      detail: "Calendly did not accept the webhook. Try reconnecting again in a moment.",
    };
  }
  if (!healthyBefore) {
    return {
      tone: "success",
      title: "Calendly reconnected",
      detail: "Everything is working again.",
    };
  }
  if (before.webhook_status === "unavailable_plan") {
    return {
      tone: "success",
      title: "Calendly reconnected",
      detail: "Meeting updates are instant now: Calendly sends every change as it happens.",
    };
  }
  return {
    tone: "success",
    title: "Calendly connection checked",
    detail: "Everything is working.",
  };
}

export const flow = new ConnectFlow();
