// Connecting Calendly in a popup, through the client (calendly.connect / reconnect /
// disconnect): the page never navigates away. The client opens the popup inside the click,
// checks its message, completes a hand-off and notices a closed popup; this file keeps what
// the Calendar card shows (pending, busy, the message) and words the outcome.
//
// While a popup is open the live stream may say first that the connection is made (the
// service finished the round trip by itself, and the popup's message is lost or slower): the
// flow then ends as a success, and the client's wait is canceled (its popup closes).

import { calendly, isAbort, onPopupOpened } from "./api.js";
import { text } from "./dom.js";
import { explain } from "./messages.js";
import { connection } from "./state.js";

function snapshot(value) {
  return value
    ? {
        status: value.status,
        updated_at: value.updated_at,
        calendly_user_uri: value.calendly_user_uri,
      }
    : null;
}

/** Does the connection `after` show a connect finished since `before` (a snapshot)? */
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

class ConnectFlow {
  constructor() {
    this.listeners = new Set();
    // The connect or reconnect in progress: {kind, controller, before, popup, snapshot}.
    this.pending = null;
    this.busy = null; // "reconnect" (until its popup opens) | "disconnect" while such a request runs
    // A reconnect whose popup the browser blocked: {error: PopupBlockedError, before}, until a
    // click on "Continue to Calendly" calls error.continue().
    this.blocked = null;
    this.message = null; // {id, tone, title, detail}
    this.generation = 0; // a signed-out session's answers are not shown to the next one
    this.nextId = 1;
    onPopupOpened((popup) => this.popupOpened(popup));
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

  /** Signed out: whatever is in progress is dropped (its popup closes). */
  reset() {
    this.generation += 1;
    const pending = this.pending;
    this.pending = null;
    if (pending) {
      pending.controller.abort();
    }
    this.busy = null;
    this.blocked = null;
    this.message = null;
    this.emit();
  }

  // ------------------------------------------------------------------ starting
  /** Connect: call from the click handler itself (the client opens the popup at once). */
  connect() {
    if (this.focusPending()) {
      return;
    }
    const pending = this.begin("connect", connection.value);
    this.message = null;
    this.follow(pending, calendly.connect({ signal: pending.controller.signal }));
    this.emit();
  }

  /** Reconnect with the stored grant; only when Calendly refuses it, approve in a popup. */
  reconnect() {
    if (this.focusPending() || this.busy) {
      return;
    }
    const pending = this.begin("reconnect", connection.value);
    this.busy = "reconnect";
    this.message = null;
    this.follow(pending, calendly.reconnect({ signal: pending.controller.signal }));
    this.emit();
  }

  /** After a blocked popup: the click on "Continue to Calendly" opens it. */
  continueInPopup() {
    const blocked = this.blocked;
    if (!blocked || this.focusPending()) {
      return;
    }
    this.blocked = null;
    this.message = null;
    const pending = this.begin("reconnect", blocked.before);
    this.busy = "reconnect";
    this.follow(pending, blocked.error.continue({ signal: pending.controller.signal }), {
      continued: true,
    });
    this.emit();
  }

  async disconnect() {
    if (this.busy || this.pending) {
      return;
    }
    const generation = this.generation;
    this.busy = "disconnect";
    this.message = null;
    this.emit();
    try {
      const result = await calendly.disconnect();
      if (generation !== this.generation) {
        return;
      }
      connection.set(result.connection || null);
      const details = ["Meetings you already received stay in your list."];
      if (result.revoke_failed) {
        details.push(
          "Calendly could not be told to revoke access, but this app no longer keeps any key to your Calendly account.",
        );
      }
      this.setMessage({ tone: "success", title: "Calendly disconnected", detail: details.join(" ") });
    } catch (error) {
      if (generation === this.generation) {
        this.setMessage(explain(error));
      }
    } finally {
      if (generation === this.generation) {
        this.busy = null;
        this.emit();
      }
    }
  }

  cancel() {
    const pending = this.pending;
    if (!pending) {
      return;
    }
    this.finish(pending);
    pending.controller.abort(); // the client closes its popup
    this.setMessage({ tone: "info", title: "Connecting canceled", detail: "Nothing was changed." });
  }

  /** A popup is waiting: bring it to the front (answers true), else false. */
  focusPending() {
    const pending = this.pending;
    if (!pending) {
      return false;
    }
    if (pending.popup) {
      try {
        if (pending.popup.closed) {
          return true; // the client notices it within a moment and ends the flow
        }
        pending.popup.focus();
      } catch {
        // nothing to do: the window is still there
      }
    }
    return true;
  }

  // ------------------------------------------------------------------ waiting
  begin(kind, before) {
    const pending = {
      kind,
      controller: new AbortController(),
      before, // the connection as it was: what a reconnect's outcome is worded against
      popup: null, // the Calendly window, once the client opened it
      snapshot: null, // the connection when it opened (what a success must differ from)
    };
    this.pending = pending;
    this.blocked = null;
    return pending;
  }

  /** The client opened the Calendly window for the flow in progress. */
  popupOpened(popup) {
    if (this.pending && !this.pending.popup) {
      this.pending.popup = popup;
      // Not at the click: a reconnect's own request may have changed the connection since.
      this.pending.snapshot = snapshot(connection.value);
      if (this.busy === "reconnect") {
        this.busy = null; // from here the card shows the pending popup, as for connect
      }
      this.emit();
    }
  }

  finish(pending) {
    if (this.pending === pending) {
      this.pending = null;
    }
    if (this.busy === "reconnect") {
      this.busy = null;
    }
    this.emit();
  }

  follow(pending, promise, { continued = false } = {}) {
    promise.then(
      (result) => {
        if (this.pending !== pending) {
          return; // canceled, signed out, or already ended by the live stream
        }
        this.finish(pending);
        connection.set(result.connection);
        this.setMessage(
          pending.popup
            ? connectedMessage(result.connection, pending.before)
            : reconnectedMessage(result.connection, pending.before),
        );
      },
      (error) => {
        if (this.pending !== pending) {
          return;
        }
        this.finish(pending);
        if (isAbort(error)) {
          return;
        }
        if (error && error.code === "popup_blocked" && pending.kind === "reconnect") {
          // The popup opened after the service's answer, so the browser may no longer count
          // the click: one more click ("Continue to Calendly") opens it.
          this.blocked = { error, before: pending.before };
          this.setMessage(
            continued
              ? { tone: "error", ...blockedWording }
              : { tone: "info", title: error.title, detail: error.detail },
          );
          return;
        }
        this.setMessage(explain(error));
      },
    );
  }

  /** The live stream (or a status read) says the connection: a waiting popup may be done. */
  onConnection() {
    const pending = this.pending;
    if (pending && pending.popup && succeeded(pending.snapshot, connection.value)) {
      this.finish(pending);
      pending.controller.abort(); // its window may still show Calendly's last page
      this.setMessage(connectedMessage(connection.value, pending.before));
    }
  }
}

const blockedWording = {
  title: "The Calendly window was blocked",
  detail: "Your browser blocked the pop-up. Allow pop-ups for this site, then try again.",
};

/** After approving in the Calendly window. */
function connectedMessage(value, before) {
  const again = Boolean(before && before.status !== "disconnected");
  const who = text(value && value.email) || text(value && value.name);
  return {
    tone: "success",
    title: again ? "Calendly reconnected" : "Calendly connected",
    detail: who
      ? `Connected as ${who}. New meetings will appear under Meetings.`
      : "New meetings will appear under Meetings.",
  };
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
