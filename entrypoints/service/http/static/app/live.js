// Live updates: the client's live() stream (it reads the Server-Sent Events, resumes after a
// drop and renews an expired token), shown in the top bar and fed into the page's models.

import { calendly } from "./api.js";
import { formatDay, formatTime, parseDate } from "./format.js";
import { connection, meetings } from "./state.js";

// How long the live stream may take to say the connection before the page asks for it.
const LIVE_CONNECTION_WAIT_MS = 5000;

const LIVE_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  unavailable: "Live updates unavailable",
  offline: "Offline",
};

const els = {
  live: document.getElementById("live-indicator"),
  liveText: document.getElementById("live-text"),
  announcer: document.getElementById("announcer"),
};

const live = {
  subscription: null,
  state: "stopped", // the client's state: connecting | open | retrying | closed; or stopped
  lastError: null, // the client's last onError: why it is retrying, or why it gave up
  opened: false, // this subscription has been open once
  batch: null, // meetings of the event being delivered
  connectionFallback: null, // timer: ask for the connection if the stream does not say it
};

/** What the indicator says, from the client's state and the browser's network status. */
function shownState() {
  if (live.state === "stopped") {
    return "stopped";
  }
  if (live.state === "closed") {
    // Given up. A refused session has been ended by the token renewal already; anything
    // else (404: no live route here, 403…) means no live updates from this deployment.
    const error = live.lastError;
    return error && error.code === "not_authenticated" ? "stopped" : "unavailable";
  }
  if (navigator.onLine === false) {
    return "offline";
  }
  return { connecting: "connecting", open: "live", retrying: "reconnecting" }[live.state] || "stopped";
}

function showLiveState() {
  const state = shownState();
  const label = LIVE_TEXT[state];
  els.live.hidden = !label;
  els.live.dataset.state = state;
  els.liveText.textContent = label || "";
  els.live.title =
    state === "live"
      ? "New and changed meetings appear here as they happen."
      : state === "unavailable"
        ? "This deployment does not stream live updates; reload to see changes."
        : "Live updates paused; trying again shortly.";
}

function announce(message) {
  els.announcer.textContent = "";
  requestAnimationFrame(() => {
    els.announcer.textContent = message;
  });
}

function describeChange(meeting, added) {
  const name = typeof meeting.name === "string" && meeting.name ? meeting.name : "Meeting";
  const start = parseDate(meeting.start_time);
  const when = start ? ` on ${formatDay(start)} at ${formatTime(start)}` : "";
  if (meeting.status === "canceled") {
    return `Canceled: ${name}${when}.`;
  }
  return `${added ? "New meeting" : "Meeting updated"}: ${name}${when}.`;
}

/** The client hands meetings over one by one; those of one event are shown (and said) together. */
function onMeeting(meeting) {
  if (live.batch === null) {
    live.batch = [];
    queueMicrotask(flushMeetings);
  }
  live.batch.push(meeting);
}

function flushMeetings() {
  const batch = live.batch || [];
  live.batch = null;
  const known = new Set(meetings.byId.keys());
  const changed = meetings.upsert(batch, { fresh: true });
  if (changed.length > 0 && changed.length <= 3) {
    announce(changed.map((m) => describeChange(m, !known.has(m.id))).join(" "));
  } else if (changed.length > 3) {
    announce(`${changed.length} meetings changed.`);
  }
}

function onStateChange(state) {
  const before = live.state;
  live.state = state;
  if (state === "open") {
    // The first stream may have begun after the meetings were read, and a stream back after
    // a failure may have started from now (its resume point refused): read them again.
    if ((!live.opened || before === "retrying") && meetings.status !== "idle") {
      meetings.resync();
    }
    live.opened = true;
  } else if (state === "retrying" || state === "closed") {
    readConnectionInstead(); // the stream did not say the connection: ask for it
  }
  showLiveState();
}

function onError(error) {
  // With "retrying" the client recovers by itself; with "closed" (next) it gave up.
  live.lastError = error;
}

/**
 * The live stream's first events say the connection (`null` when never connected): the page
 * takes it from there rather than asking the service (status()), whose 404 for a user who
 * never connected every browser logs as an error.
 */
function awaitConnection() {
  connection.expect();
  clearTimeout(live.connectionFallback);
  live.connectionFallback = connection.awaiting
    ? setTimeout(readConnectionInstead, LIVE_CONNECTION_WAIT_MS)
    : null;
}

function readConnectionInstead() {
  clearTimeout(live.connectionFallback);
  live.connectionFallback = null;
  if (live.subscription && connection.awaiting) {
    connection.load().catch(() => {});
  }
}

export function startLive() {
  stopLive();
  live.state = "connecting";
  live.lastError = null;
  live.opened = false;
  live.subscription = calendly.live({
    onMeeting,
    onConnection: (value) => connection.set(value),
    onStateChange,
    onError,
  });
  awaitConnection();
  showLiveState();
}

export function stopLive() {
  clearTimeout(live.connectionFallback);
  live.connectionFallback = null;
  const subscription = live.subscription;
  live.subscription = null;
  live.batch = null;
  if (subscription) {
    subscription.close();
  }
  live.state = "stopped";
  showLiveState();
}

/** Is the stream open (so that it says every change itself)? */
export function liveIsOpen() {
  return live.subscription !== null && live.state === "open";
}

window.addEventListener("offline", showLiveState);
window.addEventListener("online", showLiveState);
