// Settings → Calendar: the Calendly card (connect, status, reconnect, disconnect).

import { describe } from "./api.js";
import { flow } from "./connect-flow.js";
import { h, icon, ICONS, replaceChildren, text } from "./dom.js";
import {
  CONNECTION_STATUS,
  formatDate,
  formatFull,
  formatRelative,
  parseDate,
  WEBHOOK_STATUS,
} from "./format.js";
import { connection } from "./state.js";
import { messageBox, pageHeader, preserveFocus, setMessage, spinner } from "./ui.js";

function calendlyMark() {
  return h("span", { class: "brand-mark brand-mark--calendly", "aria-hidden": "true" }, icon(ICONS.calendar, { size: 22 }));
}

function statusBadge(value) {
  const status = value ? CONNECTION_STATUS[value.status] : CONNECTION_STATUS.disconnected;
  const info = status || { label: value.status, tone: "neutral" };
  return h("span", { class: ["badge", `badge--${info.tone}`] }, info.label);
}

// Unavailable buttons stay focusable (aria-disabled): focus never drops to the page while a
// request runs, and screen readers still find them.
function button(label, { key, fallback, variant = "secondary", onClick, disabled = false, busy = false, describedBy }) {
  const inactive = disabled || busy;
  return h(
    "button",
    {
      type: "button",
      class: ["button", `button--${variant}`],
      "data-focus-key": key,
      // Where focus goes when this button is gone after the next render.
      "data-focus-fallback": fallback,
      "aria-describedby": describedBy,
      "aria-disabled": inactive ? "true" : null,
      "aria-busy": busy ? "true" : null,
      on: {
        click: (event) => {
          if (!inactive && onClick) {
            onClick(event);
          }
        },
      },
    },
    busy ? spinner() : null,
    label,
  );
}

function reconnectButton(key, variant = "secondary") {
  if (flow.blocked && !flow.pending) {
    // The browser blocked the reconnect's popup: this click opens it (error.continue()).
    // Same focus key as the Reconnect it replaces: focus stays on it.
    return button("Continue to Calendly", {
      key,
      variant: "primary",
      disabled: flow.busy === "disconnect",
      onClick: () => flow.continueInPopup(),
    });
  }
  const busy = flow.busy === "reconnect";
  return button(busy ? "Reconnecting…" : "Reconnect", {
    key,
    variant,
    busy,
    disabled: Boolean(flow.pending) || flow.busy === "disconnect",
    onClick: () => flow.reconnect(),
  });
}

function banner(tone, title, body, action) {
  return h(
    "div",
    { class: ["banner", `banner--${tone}`] },
    icon(tone === "info" ? ICONS.info : ICONS.alert, { className: "banner-icon" }),
    h("div", { class: "banner-body" }, h("p", { class: "banner-title" }, title), body),
    action ? h("div", { class: "banner-action" }, action) : null,
  );
}

function notices(value) {
  const items = [];
  if (value.status === "needs_reauth") {
    const reason = text(value.last_error);
    items.push(
      banner(
        "warning",
        "Calendly needs your approval again",
        [
          h("p", {}, "Calendly no longer accepts this connection, so new meetings can't arrive. Reconnect to fix it."),
          reason ? h("p", { class: "banner-detail" }, `Reason given: ${reason}`) : null,
        ],
        reconnectButton("banner-reconnect", "primary"),
      ),
    );
    return items; // reconnecting also repairs the webhook
  }
  if (value.webhook_status === "unavailable_plan") {
    items.push(
      banner(
        "info",
        "Meetings will be kept in sync periodically",
        [
          h("p", {}, "Webhooks need a paid Calendly plan, and this account's plan doesn't include them. Your meetings will be kept in sync periodically instead of instantly."),
          freshness(value),
          h("p", { class: "banner-detail" }, "Upgraded your Calendly plan? Reconnect to switch to instant updates."),
        ],
        reconnectButton("plan-reconnect"),
      ),
    );
  } else if (value.webhook_status === "disabled") {
    items.push(
      banner(
        "warning",
        "Calendly stopped sending updates",
        h("p", {}, "Calendly disabled this account's webhook, so new meetings don't arrive right now. Reconnect to turn updates back on."),
        reconnectButton("webhook-reconnect", "primary"),
      ),
    );
  } else if (value.webhook_status === "missing") {
    items.push(
      banner(
        "warning",
        "Updates from Calendly aren't set up",
        h("p", {}, "There is no webhook for this account yet, so new meetings won't arrive. Reconnect to set it up."),
        reconnectButton("webhook-reconnect", "primary"),
      ),
    );
  }
  const trouble = value.maintenance;
  if (trouble && trouble.failures >= 3) {
    const reason = text(trouble.last_error);
    const next = trouble.retry_at ? new Date(trouble.retry_at) : null;
    items.push(
      banner(
        "warning",
        "Background sync keeps failing",
        [
          h("p", {}, `The last ${trouble.failures} attempts to sync this account with Calendly failed. It is retried automatically; reconnecting may fix it sooner.`),
          reason ? h("p", { class: "banner-detail" }, `Last error: ${reason}`) : null,
          next && !Number.isNaN(next.getTime())
            ? h("p", { class: "banner-detail" }, `Next try: ${next.toLocaleString()}`)
            : null,
        ],
        reconnectButton("maintenance-reconnect"),
      ),
    );
  }
  return items;
}

// How fresh a polled (free-plan) connection's meetings are: the service syncs it more often
// while this page is open (WATCHED_POLL_SECONDS; the live stream tells it someone watches).
const FRESHNESS_REFRESH_MS = 30_000;

function freshness(value) {
  const synced = value.synced_at ? parseDate(value.synced_at) : null;
  return h(
    "p",
    { class: "banner-detail", "data-freshness": "" },
    synced
      ? `Last synced with Calendly ${formatRelative(synced)}. While this page is open, it is synced more often.`
      : "Waiting for the first sync with Calendly.",
  );
}

function detailRow(term, ...description) {
  return h("div", { class: "detail" }, h("dt", {}, term), h("dd", {}, ...description));
}

function connectedBody(value, openDisconnect) {
  const warnings = notices(value);
  const name = text(value.name);
  const email = text(value.email);
  const since = parseDate(value.connected_since);
  const status = CONNECTION_STATUS[value.status];
  return [
    ...warnings,
    h(
      "dl",
      { class: "details" },
      detailRow(
        "Calendly account",
        h("span", { class: "account-name" }, name || email || "Unknown account"),
        name && email ? h("span", { class: "muted account-email" }, email) : null,
      ),
      detailRow("Status", status ? status.label : value.status),
      detailRow("Meeting updates", WEBHOOK_STATUS[value.webhook_status] || value.webhook_status || "Unknown"),
      detailRow(
        "Connected since",
        since
          ? h("time", { datetime: since.toISOString(), title: formatFull(since) }, `${formatDate(since)} (${formatRelative(since)})`)
          : "Unknown",
      ),
    ),
    h(
      "div",
      { class: "card-actions" },
      // A notice above already offers Reconnect as its fix: one button is enough.
      warnings.length === 0 ? reconnectButton("reconnect") : null,
      button(flow.busy === "disconnect" ? "Disconnecting…" : "Disconnect", {
        key: "disconnect",
        variant: "danger",
        busy: flow.busy === "disconnect",
        disabled: Boolean(flow.pending) || flow.busy === "reconnect",
        onClick: openDisconnect,
      }),
    ),
  ];
}

function connectBody(value) {
  const previously = value && value.status === "disconnected" ? text(value.email) : null;
  const pending = flow.pending;
  const content = [
    h(
      "p",
      { class: "card-text" },
      "Connect your Calendly account so the meetings people book with you appear under Meetings as soon as they're booked.",
    ),
    previously
      ? h("p", { class: "muted" }, `Previously connected as ${previously}. Your meeting history is kept.`)
      : null,
  ];
  if (flow.blocked && !pending) {
    content.push(
      h(
        "div",
        { class: "card-actions" },
        button("Continue to Calendly", { key: "continue", variant: "primary", onClick: () => flow.continueInPopup() }),
      ),
    );
    return content;
  }
  if (pending) {
    content.push(
      h(
        "div",
        { class: "card-actions" },
        button("Waiting for Calendly…", {
          key: "connect",
          variant: "primary",
          busy: true,
        }),
        button("Cancel", { key: "cancel", fallback: "connect", onClick: () => flow.cancel() }),
      ),
      h(
        "p",
        { class: "hint", id: "connect-hint" },
        "Approve access in the Calendly window. Can't see it? ",
        h(
          "button",
          {
            type: "button",
            class: "link-button",
            "data-focus-key": "show-window",
            "data-focus-fallback": "connect",
            on: { click: () => flow.focusPending() },
          },
          "Show the window",
        ),
      ),
    );
    return content;
  }
  content.push(
    h(
      "div",
      { class: "card-actions" },
      button("Connect with Calendly", {
        key: "connect",
        variant: "primary",
        describedBy: "connect-hint",
        // Synchronously in the click: the popup is opened before any request.
        onClick: () => flow.connect(),
      }),
    ),
    h("p", { class: "hint", id: "connect-hint" }, "A Calendly window opens so you can approve access. This page stays open."),
  );
  return content;
}

function disconnectDialog(onConfirm) {
  const title = h("h2", { id: "disconnect-title" }, "Disconnect Calendly?");
  const cancel = h("button", { type: "button", class: "button button--secondary", value: "cancel", autofocus: true }, "Cancel");
  const confirm = h("button", { type: "button", class: "button button--danger-solid", value: "confirm" }, "Disconnect");
  const dialog = h(
    "dialog",
    { class: "dialog", "aria-labelledby": "disconnect-title", "aria-describedby": "disconnect-text" },
    title,
    h(
      "p",
      { id: "disconnect-text" },
      "New meetings will stop arriving here, and this app forgets its access to your Calendly account. Meetings you already received stay in your list. You can connect again at any time.",
    ),
    h("div", { class: "dialog-actions" }, cancel, confirm),
  );
  cancel.addEventListener("click", () => dialog.close("cancel"));
  confirm.addEventListener("click", () => dialog.close("confirm"));
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "confirm") {
      onConfirm();
    }
  });
  return dialog;
}

/** Render into `main`; answers a cleanup function. */
export function renderCalendar(main) {
  const status = h("div", { class: "messages", role: "status", "aria-live": "polite" });
  const alert = h("div", { class: "messages", role: "alert" });
  const cardBody = h("div", { class: "card-body" });
  const badgeSlot = h("span", { class: "card-badge" });
  const cardHeading = h("h2", { class: "card-title", id: "calendly-card-title", tabindex: "-1" }, "Calendly");
  const dialog = disconnectDialog(() => {
    flow.disconnect().then(() => {
      const target = main.querySelector('[data-focus-key="connect"]') || cardHeading;
      target.focus();
    });
  });
  let shownMessage = 0;

  const openDisconnect = () => {
    dialog.returnValue = "";
    dialog.showModal();
  };

  main.replaceChildren(
    pageHeader({
      eyebrow: "Settings",
      title: "Calendar",
      lead: "Connect your calendar so the meetings people book with you show up in this app.",
    }),
    status,
    alert,
    h(
      "section",
      { class: "card", "aria-labelledby": "calendly-card-title" },
      h(
        "div",
        { class: "card-header" },
        calendlyMark(),
        h("div", { class: "card-heading" }, cardHeading, h("p", { class: "card-subtitle" }, "Scheduling")),
        badgeSlot,
      ),
      cardBody,
    ),
    dialog,
  );

  function renderMessage() {
    const message = flow.message;
    if (!message) {
      if (shownMessage !== 0) {
        status.replaceChildren();
        alert.replaceChildren();
        shownMessage = 0;
      }
      return;
    }
    if (message.id === shownMessage) {
      return;
    }
    shownMessage = message.id;
    const box = messageBox(message, () => flow.setMessage(null));
    setMessage(message.tone === "error" ? alert : status, box);
    (message.tone === "error" ? status : alert).replaceChildren();
  }

  function renderCard() {
    const hadFocus = cardBody.contains(document.activeElement);
    preserveFocus(main, () => {
      if (!connection.loaded) {
        badgeSlot.replaceChildren();
        if (connection.error) {
          const { title, detail } = describe(connection.error);
          cardBody.replaceChildren(
            banner(
              "warning",
              `Couldn't load your Calendly connection: ${title}`,
              h("p", {}, detail),
              button("Try again", { key: "retry", onClick: () => connection.load().catch(() => {}) }),
            ),
          );
        } else {
          cardBody.replaceChildren(h("p", { class: "loading" }, spinner(), "Loading your Calendly connection…"));
        }
        return;
      }
      const value = connection.value;
      badgeSlot.replaceChildren(statusBadge(value));
      replaceChildren(cardBody, connection.connected ? connectedBody(value, openDisconnect) : connectBody(value));
    });
    // The focused control disappeared (e.g. Connect became Disconnect): keep focus in the card.
    if (hadFocus && !main.contains(document.activeElement) && !dialog.open) {
      cardHeading.focus();
    }
  }

  const render = () => {
    renderMessage();
    renderCard();
  };
  const offConnection = connection.subscribe(render);
  const offFlow = flow.subscribe(render);
  render();
  connection.ensure();
  // A polled connection: read its last sync again now and then, so "last synced" stays true.
  const freshnessTimer = setInterval(() => {
    if (connection.loaded && connection.value?.webhook_status === "unavailable_plan") {
      connection.load({ quiet: true }).catch(() => {});
    }
  }, FRESHNESS_REFRESH_MS);
  return () => {
    clearInterval(freshnessTimer);
    offConnection();
    offFlow();
    if (dialog.open) {
      dialog.close();
    }
    // Messages belong to the visit: coming back later shows the card, not old news.
    if (flow.message) {
      flow.setMessage(null);
    }
  };
}
