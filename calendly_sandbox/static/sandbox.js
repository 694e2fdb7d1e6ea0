// The Calendly sandbox's browser UI: book meetings, act on them, read the webhook deliveries.
// Plain ES2020, no framework, no build step. It only calls the sandbox's control API
// (/_sandbox/...). Everything shown is set with textContent, never parsed as HTML, except the
// users list, which is re-read from the sandbox's own (escaped) index page.
"use strict";

const DATA = JSON.parse(document.getElementById("sandbox-data")?.textContent || "{}");
const STATUS = document.getElementById("status");
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
const DATE_FMT = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  day: "numeric",
  month: "short",
  year: "numeric",
});
const TIME_FMT = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const STAMP_FMT = new Intl.DateTimeFormat(undefined, {
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});
const CLOCK_FMT = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});
const LOG_SIZE = 20;

// ------------------------------------------------------------------ helpers
/** Build an element; attributes that are null, undefined or false are left out. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const pill = (text, tone = "") => h("span", { class: `pill ${tone}`.trim() }, text);
const lastSegment = (uri) => String(uri || "").replace(/\/+$/, "").split("/").pop();
const when = (iso) => {
  const d = new Date(iso);
  return `${DATE_FMT.format(d)}, ${TIME_FMT.format(d)}`;
};

/** `YYYY-MM-DDTHH:MM` of a Date in the browser's time zone (what datetime-local holds). */
function localInputValue(date) {
  const p = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())}` +
    `T${p(date.getHours())}:${p(date.getMinutes())}`
  );
}

/** A datetime-local value (browser time zone) as a UTC ISO 8601 string, or null. */
function inputToIso(value) {
  if (!value) return null;
  const date = new Date(value); // date-time without an offset is local time
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

function say(text, tone = "") {
  STATUS.textContent = text;
  STATUS.className = `status ${tone}`.trim();
}

/** Call the control API; resolves to the JSON answer, rejects with a readable message. */
async function call(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new Error("The sandbox did not answer. Is it still running?");
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const parts = [json?.message || json?.title || `HTTP ${response.status}`];
    for (const d of json?.details || []) parts.push(`${d.parameter} ${d.message}`);
    throw new Error(`Refused: ${parts.join("; ")}`);
  }
  return json;
}

let busy = false;

/** Run one action at a time: mark the control busy, report failures in the status line. */
async function run(control, pending, work) {
  if (busy) return;
  busy = true;
  control?.setAttribute("aria-disabled", "true");
  document.body.setAttribute("aria-busy", "true");
  say(pending, "pending");
  try {
    await work();
  } catch (error) {
    say(error instanceof Error ? error.message : String(error), "error");
  } finally {
    busy = false;
    control?.removeAttribute("aria-disabled");
    document.body.removeAttribute("aria-busy");
  }
}

// ---------------------------------------------------------------- deliveries
function lastAttempt(d) {
  return d.attempts.length ? d.attempts[d.attempts.length - 1] : null;
}

function answerOf(d) {
  const a = lastAttempt(d);
  if (!a) return "";
  return a.status !== null && a.status !== undefined ? `HTTP ${a.status}` : a.error || "no answer";
}

/** "invitee.created delivered to 1 subscription (HTTP 200)" for each event, in order. */
function summarize(deliveries) {
  if (!deliveries.length) {
    return ["nothing was sent: no webhook subscription hears about this user", "warn"];
  }
  const byEvent = new Map();
  const payloads = new Map();
  for (const d of deliveries) {
    if (!byEvent.has(d.event)) {
      byEvent.set(d.event, new Map());
      payloads.set(d.event, new Set());
    }
    payloads.get(d.event).add(d.payload_uri);
    const key = `${d.state}\u0000${answerOf(d)}`;
    const groups = byEvent.get(d.event);
    if (!groups.has(key)) groups.set(key, new Set());
    groups.get(key).add(d.subscription);
  }
  let tone = "";
  const parts = [];
  for (const [event, groups] of byEvent) {
    const times = payloads.get(event).size;
    const bits = [];
    for (const [key, subs] of groups) {
      const [state, answer] = key.split("\u0000");
      const n = plural(subs.size, "subscription");
      const why = answer ? ` (${answer})` : "";
      if (state === "delivered") bits.push(`delivered to ${n}${why}`);
      else if (state === "held") bits.push(`held for ${n} until released (hold_deliveries)`);
      else if (state === "sending") bits.push(`still being sent to ${n}`);
      else if (state === "retrying") bits.push(`failed for ${n}${why}, retrying`);
      else if (state === "abandoned") bits.push(`dropped for ${n}${why}: subscription disabled`);
      else bits.push(`failed for ${n}${why}`);
      if (!["delivered", "held", "sending"].includes(state)) tone = "warn";
    }
    parts.push(`${times > 1 ? `${times} × ` : ""}${event} ${bits.join(", ")}`);
  }
  return [parts.join("; "), tone];
}

function report(done, deliveries) {
  const [summary, tone] = summarize(deliveries || []);
  say(`${done}: ${summary}.`, tone);
}

// ------------------------------------------------------------ booking page
function initBooking() {
  const user = DATA.user;
  const labels = DATA.location_labels || {};
  const uid = encodeURIComponent(user.id);
  const form = document.getElementById("book-form");
  const eventsRoot = document.getElementById("events");
  const logPanel = document.getElementById("deliveries");
  let events = DATA.events || { now: new Date().toISOString(), events: [] };

  const locationLabel = (loc) => labels[loc?.type] || loc?.type || "No location";

  // --- the form and the facts beside it
  const field = (name) => form.elements.namedItem(name);
  const tomorrow = new Date();
  tomorrow.setDate(tomorrow.getDate() + 1);
  tomorrow.setHours(10, 0, 0, 0);
  field("start").value = localInputValue(tomorrow);
  document.getElementById("fact-zone").textContent = ZONE;
  document.getElementById("events-zone").textContent =
    `Most recently booked first. Times are in ${ZONE}, your browser's time zone.`;

  let nameEdited = false;
  function showFacts() {
    const minutes = Number(field("duration").value);
    const seats = Number(field("seats").value);
    document.getElementById("event-title").textContent =
      field("event_name").value.trim() || "Meeting";
    document.getElementById("fact-duration").textContent =
      minutes > 0 ? `${minutes} min` : "Duration not set";
    const select = field("location_type");
    document.getElementById("fact-location").textContent =
      select.options[select.selectedIndex]?.text || "";
    document.getElementById("fact-seats").textContent =
      seats > 1 ? `Group event, ${seats} seats` : "One-on-one";
  }
  field("event_name").addEventListener("input", () => {
    nameEdited = true;
    showFacts();
  });
  field("duration").addEventListener("input", () => {
    const minutes = Number(field("duration").value);
    if (!nameEdited && minutes > 0) field("event_name").value = `${minutes} Minute Meeting`;
    showFacts();
  });
  field("location_type").addEventListener("change", showFacts);
  field("seats").addEventListener("input", showFacts);
  showFacts();

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const start = inputToIso(field("start").value);
    const name = field("name").value.trim();
    const submit = form.querySelector("button[type=submit]");
    run(submit, `Booking ${name}…`, async () => {
      if (!start) throw new Error("Pick a date and time.");
      const result = await call("POST", `/_sandbox/users/${uid}/bookings`, {
        start_time: start,
        invitees: [{ name, email: field("email").value.trim(), timezone: ZONE }],
        duration_minutes: Number(field("duration").value),
        event_name: field("event_name").value.trim(),
        location_type: field("location_type").value,
        invitee_limit: Number(field("seats").value),
        wait: true,
      });
      const booked = result.event;
      report(`Booked “${booked.name}” with ${name} on ${when(booked.start_time)}`,
        result.deliveries);
      // Ready for the next booking, not the same one again: another invitee, a free time.
      field("name").value = "";
      field("email").value = "";
      field("name").focus();
      try {
        await refresh();
      } finally {
        const minutes = Number(field("duration").value) || 30;
        const next = nextFreeStart(Date.parse(booked.end_time), minutes,
          [...events.events, booked]);
        field("start").value = localInputValue(next);
      }
    });
  });

  /** The first start at or after `from` where `minutes` overlap none of the host's meetings. */
  function nextFreeStart(from, minutes, list) {
    const busy = list
      .filter((e) => e.status !== "canceled")
      .map((e) => [Date.parse(e.start_time), Date.parse(e.end_time)]);
    let start = from;
    for (let moved = true; moved;) {
      moved = false;
      for (const [busyStart, busyEnd] of busy) {
        if (busyStart < start + minutes * 60000 && start < busyEnd) {
          start = busyEnd;
          moved = true;
        }
      }
    }
    return new Date(start);
  }

  // --- the events list
  function button(text, data, tone = "") {
    return h("button", { type: "button", class: `small ${tone}`.trim(), dataset: data }, text);
  }

  function inlineForm(summary, key, action, data, fields, submitText) {
    return h(
      "details",
      { class: "inline", dataset: { openKey: key } },
      h("summary", {}, summary),
      h("form", { class: "inline-form", dataset: { action, ...data } }, ...fields,
        h("button", { type: "submit", class: "small primary", dataset: { focusKey: key } },
          submitText)),
    );
  }

  function labelled(id, text, control) {
    return h("div", { class: "field" }, h("label", { for: id }, text), control);
  }

  function rescheduleForm(event, invitee) {
    const id = invitee.id;
    const next = new Date(Date.parse(event.start_time) + 24 * 3600 * 1000);
    return inlineForm("Reschedule…", `reschedule:${id}`, "reschedule",
      { invitee: id, label: invitee.name },
      [
        labelled(`rs-start-${id}`, "New date and time",
          h("input", { type: "datetime-local", id: `rs-start-${id}`, name: "start", required: true,
            value: localInputValue(next) })),
        labelled(`rs-order-${id}`, "Webhook order",
          h("select", { id: `rs-order-${id}`, name: "order" },
            h("option", { value: "canceled_first" }, "invitee.canceled first"),
            h("option", { value: "created_first" }, "invitee.created first"))),
      ],
      "Reschedule");
  }

  function addInviteeForm(event) {
    const id = event.id;
    return inlineForm("Add invitee…", `add:${id}`, "add-invitee", { event: id, label: event.name },
      [
        labelled(`ai-name-${id}`, "Name",
          h("input", { type: "text", id: `ai-name-${id}`, name: "name", required: true,
            autocomplete: "off" })),
        labelled(`ai-email-${id}`, "Email",
          h("input", { type: "email", id: `ai-email-${id}`, name: "email", required: true,
            autocomplete: "off" })),
      ],
      "Add");
  }

  function inviteeItem(event, invitee) {
    const id = invitee.id;
    const c = invitee.cancellation;
    const pills = [];
    if (invitee.status === "active") pills.push(pill("Active", "green"));
    else if (invitee.rescheduled) pills.push(pill("Rescheduled", "amber"));
    else pills.push(pill(`Canceled by ${c?.canceler_type === "host" ? "host" : "invitee"}`, "red"));
    if (invitee.no_show) pills.push(pill("No-show", "amber"));
    if (invitee.old_invitee) pills.push(pill("Moved here", "blue"));
    const note = c
      ? h("p", { class: "meta" },
        `Canceled by ${c.canceled_by}${c.reason ? `: “${c.reason}”` : ""} · ${when(c.created_at)}`)
      : null;
    const data = { invitee: id, label: invitee.name };
    const actions = [];
    if (invitee.status === "active") {
      actions.push(button("Cancel as invitee",
        { ...data, action: "cancel-invitee", focusKey: `cancel-invitee:${id}` }, "danger"));
      actions.push(button("Cancel as host",
        { ...data, action: "cancel-host", focusKey: `cancel-host:${id}` }, "danger"));
    }
    if (invitee.no_show) {
      actions.push(button("Unmark no-show",
        { ...data, action: "unmark-no-show", focusKey: `no-show:${id}` }));
    } else if (invitee.status === "active") {
      actions.push(button("Mark no-show",
        { ...data, action: "mark-no-show", focusKey: `no-show:${id}` }));
    }
    if (invitee.status === "active") actions.push(rescheduleForm(event, invitee));
    return h("li", { class: "invitee", tabindex: "-1", dataset: { focusKey: `invitee:${id}` } },
      h("div", { class: "invitee-head" },
        h("strong", {}, invitee.name), h("span", { class: "email" }, invitee.email), pills),
      note,
      actions.length
        ? h("div", { class: "toolbar", role: "group", "aria-label": `Actions for ${invitee.name}` },
          actions)
        : null);
  }

  function eventItem(event) {
    const start = new Date(event.start_time);
    const end = new Date(event.end_time);
    const canceled = event.status === "canceled";
    const counter = event.invitees_counter;
    const group = counter.limit > 1;
    const minutes = Math.round((end - start) / 60000);
    const pills = [];
    if (canceled) pills.push(pill("Canceled", "red"));
    if (group) pills.push(pill(`Group · ${counter.active} of ${counter.limit} seats taken`, "blue"));
    const actions = [];
    if (!canceled) {
      actions.push(button("Cancel event",
        { action: "cancel-event", event: event.id, label: event.name,
          focusKey: `cancel-event:${event.id}` }, "danger"));
      if (group && counter.active < counter.limit) actions.push(addInviteeForm(event));
    }
    return h("li", { class: `event${canceled ? " canceled" : ""}`, tabindex: "-1",
      dataset: { focusKey: `event:${event.id}` } },
    h("div", { class: "when" }, h("span", { class: "dot", "aria-hidden": "true" }),
      h("div", {}, h("span", { class: "date" }, DATE_FMT.format(start)),
        h("span", { class: "time" }, `${TIME_FMT.format(start)} – ${TIME_FMT.format(end)}`))),
    h("div", {},
      h("div", { class: "event-head" },
        h("h4", {}, event.name,
          h("span", { class: "sr-only" }, `, ${DATE_FMT.format(start)} ${TIME_FMT.format(start)}`)),
        pills),
      h("p", { class: "meta" },
        `${locationLabel(event.location)} · ${plural(minutes, "minute")} · booked ` +
        when(event.created_at)),
      h("ul", { class: "invitees", "aria-label": "Invitees" },
        event.invitees.map((i) => inviteeItem(event, i))),
      actions.length
        ? h("div", { class: "toolbar", role: "group", "aria-label": `Actions for ${event.name}` },
          actions)
        : null));
  }

  function renderEvents() {
    const now = Date.parse(events.now);
    const upcoming = events.events.filter((e) => Date.parse(e.end_time) >= now);
    const past = events.events.filter((e) => Date.parse(e.end_time) < now);
    const open = new Set(
      [...eventsRoot.querySelectorAll("details[open]")].map((d) => d.dataset.openKey));
    const parts = [];
    if (!events.events.length) {
      parts.push(h("p", { class: "empty" }, "No meetings yet. Book one above."));
    } else {
      parts.push(h("h3", {}, "Upcoming"));
      parts.push(upcoming.length
        ? h("ol", { class: "events" }, upcoming.map(eventItem))
        : h("p", { class: "empty" }, "Nothing upcoming."));
      if (past.length) {
        parts.push(h("h3", {}, "Past"));
        parts.push(h("ol", { class: "events" }, past.map(eventItem)));
      }
    }
    eventsRoot.replaceChildren(...parts);
    for (const d of eventsRoot.querySelectorAll("details[data-open-key]")) {
      if (open.has(d.dataset.openKey)) d.open = true;
    }
  }

  /** Put focus back where it was, or on the nearest thing that still exists. */
  function refocus(keys) {
    for (const key of keys) {
      const el = key && eventsRoot.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
      if (el) {
        el.focus();
        return;
      }
    }
    document.getElementById("events-title").focus();
  }

  async function refresh() {
    events = await call("GET", `/_sandbox/users/${uid}/events`);
    renderEvents();
    if (logPanel.open) await loadLog();
    else loadLog().catch(() => {});
  }

  const ACTIONS = {
    "cancel-invitee": (d) => [`Canceled ${d.label} as the invitee`,
      call("POST", `/_sandbox/invitees/${d.invitee}/cancel`,
        { canceler_type: "invitee", wait: true })],
    "cancel-host": (d) => [`Canceled ${d.label} as the host`,
      call("POST", `/_sandbox/invitees/${d.invitee}/cancel`,
        { canceler_type: "host", wait: true })],
    "cancel-event": (d) => [`Canceled “${d.label}”`,
      call("POST", `/_sandbox/events/${d.event}/cancel`, { wait: true })],
    "mark-no-show": (d) => [`Marked ${d.label} as a no-show`,
      call("POST", `/_sandbox/invitees/${d.invitee}/no_show`, { wait: true })],
    "unmark-no-show": (d) => [`Unmarked ${d.label} as a no-show`,
      call("DELETE", `/_sandbox/invitees/${d.invitee}/no_show`, { wait: true })],
    reschedule: (d, form) => {
      const start = inputToIso(form.elements.namedItem("start").value);
      if (!start) throw new Error("Pick the new date and time.");
      return [`Rescheduled ${d.label} to ${when(start)}`,
        call("POST", `/_sandbox/invitees/${d.invitee}/reschedule`,
          { start_time: start, order: form.elements.namedItem("order").value, wait: true })];
    },
    "add-invitee": (d, form) => {
      const name = form.elements.namedItem("name").value.trim();
      return [`Added ${name} to “${d.label}”`,
        call("POST", `/_sandbox/events/${d.event}/invitees`, {
          name, email: form.elements.namedItem("email").value.trim(), timezone: ZONE, wait: true,
        })];
    },
  };

  function perform(control, data, form) {
    const action = ACTIONS[data.action];
    if (!action) return;
    const keys = [control?.dataset.focusKey, data.invitee && `invitee:${data.invitee}`,
      data.event && `event:${data.event}`, control?.closest("li.event")?.dataset.focusKey];
    run(control, "Working…", async () => {
      const [done, pending] = action(data, form);
      const result = await pending;
      report(done, result.deliveries);
      await refresh();
      refocus(keys);
    });
  }

  eventsRoot.addEventListener("click", (ev) => {
    const control = ev.target.closest("button[data-action]");
    if (control) perform(control, control.dataset, null);
  });
  eventsRoot.addEventListener("submit", (ev) => {
    const form = ev.target.closest("form[data-action]");
    if (!form) return;
    ev.preventDefault();
    perform(form.querySelector("button[type=submit]"), form.dataset, form);
  });

  // --- the delivery log
  function hears(sub) {
    return (sub.scope === "user" && sub.user === user.uri) ||
      (sub.scope === "organization" && sub.organization === user.current_organization);
  }

  function invitedName(d) {
    try {
      return String(JSON.parse(d.body).payload.name);
    } catch {
      return "";
    }
  }

  const STATE_TONE = {
    delivered: "green", retrying: "amber", held: "blue", sending: "", failed: "red",
    abandoned: "red",
  };

  async function loadLog() {
    const [subs, log] = await Promise.all([
      call("GET", "/_sandbox/subscriptions"),
      call("GET", "/_sandbox/deliveries"),
    ]);
    const mine = subs.subscriptions.filter(hears);
    const mineIds = new Set(mine.map((s) => lastSegment(s.uri)));
    const eventIds = new Set(events.events.map((e) => e.id));
    const about = (d) => /\/scheduled_events\/([^/]+)\//.exec(d.payload_uri)?.[1];
    const all = log.deliveries.filter((d) => mineIds.has(d.subscription) || eventIds.has(about(d)));
    const shown = all.slice(-LOG_SIZE).reverse();
    document.getElementById("delivery-count").textContent = String(all.length);

    const subsBox = document.getElementById("subscriptions");
    subsBox.replaceChildren(mine.length
      ? h("div", {}, h("strong", {}, "Subscriptions that hear about these meetings"),
        h("ul", { class: "subs" }, mine.map((s) => h("li", {},
          pill(s.state, s.state === "active" ? "green" : "red"), " ",
          `${s.scope} scope → `, h("code", {}, s.callback_url)))))
      : h("p", { class: "muted" }, "No webhook subscription hears about these meetings."));

    const logBox = document.getElementById("delivery-log");
    if (!shown.length) {
      logBox.replaceChildren(h("p", { class: "empty" }, "No deliveries yet."));
      return;
    }
    // One callback URL is already named above; several get a column to tell them apart.
    const urls = new Set(shown.map((d) => d.callback_url));
    const showUrl = urls.size > 1 || !mine.some((s) => urls.has(s.callback_url));
    const rows = shown.map((d) => {
      const first = d.attempts[0];
      return h("tr", {},
        h("td", {}, String(d.id)),
        h("td", { class: "nowrap" }, first
          ? h("time", { datetime: first.at, title: STAMP_FMT.format(new Date(first.at)) },
            CLOCK_FMT.format(new Date(first.at)))
          : "—"),
        h("td", {}, h("code", {}, d.event), d.copy ? ` (copy ${d.copy})` : ""),
        h("td", {}, invitedName(d)),
        showUrl ? h("td", {}, h("code", {}, d.callback_url)) : null,
        h("td", {}, pill(d.state, STATE_TONE[d.state] || "")),
        h("td", { class: lastAttempt(d)?.error ? "error-cell" : "nowrap" }, answerOf(d) || "—",
          d.attempts.length > 1 ? ` · ${plural(d.attempts.length, "attempt")}` : ""));
    });
    const heads = ["#", "Sent", "Event", "Invitee", showUrl && "Callback URL", "State", "Answer"];
    logBox.replaceChildren(h("div", { class: "table-wrap", tabindex: "0", role: "region",
      "aria-label": "Webhook deliveries" },
    h("table", { class: "log" },
      h("caption", {}, `Newest first: the last ${shown.length} of ${all.length}.`),
      h("thead", {}, h("tr", {}, heads.filter(Boolean).map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))));
  }

  logPanel.addEventListener("toggle", () => {
    if (logPanel.open) loadLog().catch((e) => say(e.message, "error"));
  });
  const refreshButton = document.getElementById("refresh-log");
  refreshButton.addEventListener("click", () =>
    run(refreshButton, "Loading the deliveries…", async () => {
      await loadLog();
      say("Delivery log refreshed.");
    }));

  renderEvents();
  loadLog().catch((e) => say(e.message, "error"));
}

// ------------------------------------------------------------------- index
function initIndex() {
  const form = document.getElementById("new-user");
  const usersRoot = document.getElementById("users");

  async function refreshUsers() {
    const response = await fetch("/_sandbox/", { headers: { Accept: "text/html" } });
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("users");
    if (fresh) usersRoot.replaceChildren(...fresh.childNodes);
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const submit = form.querySelector("button[type=submit]");
    const field = (name) => form.elements.namedItem(name).value.trim();
    run(submit, "Creating the user…", async () => {
      const user = await call("POST", "/_sandbox/users",
        { name: field("name"), email: field("email"), plan: field("plan") });
      form.reset();
      await refreshUsers();
      say(`Created ${user.name} on the ${user.plan} plan. Their booking page is listed above.`);
      form.elements.namedItem("name").focus();
    });
  });

  usersRoot.addEventListener("change", (ev) => {
    const input = ev.target;
    const box = input.closest?.("fieldset[data-user]");
    if (!box || input.type !== "radio") return;
    const previous = input.value === "free" ? "standard" : "free";
    run(null, "Changing the plan…", async () => {
      try {
        const user = await call("PATCH", `/_sandbox/users/${encodeURIComponent(box.dataset.user)}`,
          { plan: input.value });
        say(user.plan === "free"
          ? `${user.name} is on the Free plan now: Calendly refuses new webhook subscriptions.`
          : `${user.name} is on the Standard plan now: webhook subscriptions are allowed.`);
      } catch (error) {
        const back = box.querySelector(`input[value="${previous}"]`);
        if (back) back.checked = true;
        throw error;
      }
    });
  });
}

if (DATA.page === "book") initBooking();
else if (DATA.page === "index") initIndex();
