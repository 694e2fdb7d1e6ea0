// The example host app's page: its own sign-in, then calendly-connect's JS client for the rest.
//
// What a host developer copies is marked "COPY": load the client from the service, give it a
// getToken that asks your own back end for a short-lived token, call connect/reconnect/
// disconnect from buttons, list meetings, and keep them current with live().

const $ = (id) => document.getElementById(id);
const SERVICE_URL = document.querySelector('meta[name="calendly-connect-url"]').content;
// Ask the back end for a new token when the one held expires within this many seconds.
const TOKEN_MARGIN_SECONDS = 60;
const NOTIFICATIONS_POLL_MS = 5000;
const MAX_MEETING_PAGES = 5;

let session = null; // {user, token, expires_at} from this app's back end
let client = null; // calendly-connect's client for the signed-in user
let liveHandle = null;
let notificationsTimer = null;
let connection = null; // the last connection the service reported (null: none)
let blockedError = null; // a PopupBlockedError whose continue() the "Continue" button calls
const meetings = new Map(); // id -> meeting

// ------------------------------------------------------------------ this app's own back end
async function hostApi(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  return { status: response.status, data };
}

// COPY: the client calls this whenever it needs a token; hand it one from your back end (here
// the session cookie is what proves who the user is) and reuse it until it is nearly expired.
// `refresh: true` (the service refused the last one, or the live stream's token ran out) asks
// for a NEW token; null means "signed out".
async function getToken({ refresh = false } = {}) {
  const now = Date.now() / 1000;
  if (!refresh && session && session.expires_at - now > TOKEN_MARGIN_SECONDS) {
    return session.token;
  }
  const { status, data } = await hostApi("POST", "/api/session/token");
  if (status !== 200) {
    return null;
  }
  session = data;
  return session.token;
}

// ------------------------------------------------------------------ the client
// COPY: the client is an ES module served by calendly-connect itself, always matching the API.
let clientModule = null;
async function loadClient() {
  if (!clientModule) {
    clientModule = await import(`${SERVICE_URL}/client/v1/calendly-connect.js`);
  }
  return clientModule;
}

// COPY: one clear sentence per typed error (error.code), in the host's own words.
const ERROR_MESSAGES = {
  popup_blocked: [
    "The Calendly window was blocked",
    "Your browser blocked the pop-up. Click “Continue to Calendly” to open it " +
      "(or allow pop-ups for this site).",
  ],
  popup_closed: [
    "The Calendly window was closed",
    "It was closed before you finished, so nothing changed. Click the button to try again.",
  ],
  denied: [
    "Access was not granted",
    "You declined in Calendly, so nothing was connected.",
  ],
  account_in_use: [
    "That Calendly account is already connected",
    "Another user of this app has connected it. Sign in to Calendly with a different account, " +
      "or ask them to disconnect it first.",
  ],
  expired: [
    "The attempt took too long",
    "Connecting has to be finished within a few minutes. Click the button to start again.",
  ],
  not_authenticated: [
    "You are signed out",
    "Your session with this app has ended. Sign in again.",
  ],
  network: [
    "Calendly Connect could not be reached",
    "Check your connection (and that the service is running), then try again.",
  ],
  service: [
    "Calendly Connect could not do it",
    "Something went wrong on the service's side. Try again in a moment.",
  ],
};

function describeError(error) {
  const known = ERROR_MESSAGES[error?.code];
  const title = known ? known[0] : error?.title || "Something went wrong";
  // The service's own detail is specific (e.g. which check failed); prefer it for `service`.
  const detail =
    (error?.code === "service" && error?.detail) ||
    (known ? known[1] : error?.detail || error?.message || String(error));
  return { code: error?.code || "unknown", title, detail };
}

// ------------------------------------------------------------------ rendering
const STATUS_TEXT = {
  none: "Not connected",
  active: "Connected",
  needs_reauth: "Needs reconnecting",
  disconnected: "Disconnected",
};

const LIVE_TEXT = {
  connecting: "connecting…",
  open: "live",
  retrying: "reconnecting…",
  closed: "not live",
};

function renderConnection() {
  const status = connection ? connection.status : "none";
  const statusEl = $("connection-status");
  statusEl.dataset.status = status;
  statusEl.textContent = STATUS_TEXT[status] || status;
  $("connection-email").textContent =
    connection && connection.email && status !== "disconnected" ? `as ${connection.email}` : "";
  const detail = $("connection-detail");
  if (status === "needs_reauth") {
    detail.textContent =
      "Calendly no longer accepts this app's access (revoked or expired). Reconnect to resume.";
    detail.hidden = false;
  } else if (connection && connection.webhook_status && connection.webhook_status !== "active" && status === "active") {
    detail.textContent = `Live updates from Calendly: ${connection.webhook_status}.`;
    detail.hidden = false;
  } else {
    detail.hidden = true;
  }
  const connected = status === "active" || status === "needs_reauth";
  $("connect").hidden = connected;
  $("reconnect").hidden = !connected;
  $("disconnect").hidden = !connected;
}

function setMessage(tone, title, detail, code = "") {
  const box = $("connection-message");
  box.dataset.tone = tone;
  box.dataset.code = code;
  box.setAttribute("role", tone === "error" ? "alert" : "status");
  $("connection-message-title").textContent = title;
  $("connection-message-detail").textContent = detail;
  box.hidden = false;
}

function clearMessage() {
  $("connection-message").hidden = true;
  $("continue").hidden = true;
  blockedError = null;
}

function formatTime(value) {
  if (!value) {
    return "time unknown";
  }
  return new Date(value).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function renderMeetings() {
  const list = $("meeting-list");
  const sorted = [...meetings.values()].sort((a, b) =>
    String(a.start_time || "").localeCompare(String(b.start_time || "")),
  );
  list.replaceChildren(
    ...sorted.map((meeting) => {
      const item = document.createElement("li");
      item.dataset.testid = "meeting-item";
      item.dataset.meetingId = meeting.id;
      item.dataset.status = meeting.status;
      const name = document.createElement("strong");
      name.className = "name";
      name.textContent = meeting.name || "Meeting";
      const when = document.createElement("div");
      when.className = "when";
      when.textContent =
        formatTime(meeting.start_time) + (meeting.status === "canceled" ? " · canceled" : "");
      const who = document.createElement("div");
      const invitees = (meeting.invitees || []).map((i) => i.name || i.email).filter(Boolean);
      who.textContent = invitees.length ? `with ${invitees.join(", ")}` : "";
      item.append(name, when, who);
      return item;
    }),
  );
  $("meetings-empty").hidden = meetings.size > 0;
}

function renderNotifications(items) {
  $("notification-list").replaceChildren(
    ...items.map((item) => {
      const li = document.createElement("li");
      li.dataset.testid = "notification-item";
      li.dataset.type = item.type;
      const type = document.createElement("strong");
      type.textContent = item.type;
      const when = document.createElement("div");
      when.className = "when";
      when.textContent = `#${item.id} · ${formatTime(item.created_at)}`;
      li.append(type, when);
      return li;
    }),
  );
  $("notifications-empty").hidden = items.length > 0;
}

function fatal(text) {
  const box = $("fatal");
  box.textContent = text;
  box.hidden = false;
}

// ------------------------------------------------------------------ the flows
async function refreshConnection() {
  // COPY: status() is the user's connection, or null when they never connected.
  connection = await client.status();
  renderConnection();
}

async function loadMeetings() {
  meetings.clear();
  let pages = 0;
  // COPY: meetings() pages through the user's meetings; each page is {meetings, nextCursor}.
  for await (const page of client.meetings({})) {
    for (const meeting of page.meetings) {
      meetings.set(meeting.id, meeting);
    }
    pages += 1;
    if (pages >= MAX_MEETING_PAGES) {
      break;
    }
  }
  renderMeetings();
}

function startLive() {
  stopLive();
  // COPY: one live stream per open page: meetings and connection changes as they happen.
  liveHandle = client.live({
    onMeeting(meeting) {
      meetings.set(meeting.id, meeting);
      renderMeetings();
    },
    onConnection(value) {
      connection = value;
      renderConnection();
    },
    onStateChange(state) {
      // "connecting", "open", "retrying" (after a failure), "closed".
      const el = $("live-state");
      el.dataset.state = state;
      el.textContent = LIVE_TEXT[state] || state;
    },
    onError(error) {
      const { title, detail, code } = describeError(error);
      if (code === "not_authenticated") {
        setMessage("error", title, detail, code);
      } else {
        console.warn("live updates:", title, detail);
      }
    },
  });
}

function stopLive() {
  if (liveHandle) {
    liveHandle.close();
    liveHandle = null;
  }
}

async function pollNotifications() {
  try {
    const { status, data } = await hostApi("GET", "/api/notifications");
    if (status === 200) {
      renderNotifications(data.notifications);
    }
  } catch {
    // This app's own back end is unreachable for a moment: the next poll tries again.
  }
}

function setBusy(busy) {
  for (const id of ["connect", "reconnect", "disconnect", "continue"]) {
    $(id).disabled = busy;
  }
}

async function run(action) {
  // COPY: connect() and reconnect() must be called straight from the click (popup blockers
  // only allow a window opened by a user gesture).
  setBusy(true);
  clearMessage();
  try {
    await action();
  } catch (error) {
    const { title, detail, code } = describeError(error);
    setMessage("error", title, detail, code);
    if (code === "popup_blocked" && typeof error.continue === "function") {
      // COPY: a reconnect opens the popup after the service answered, which some browsers
      // block; continue() from a NEW click opens it and carries on with the same attempt.
      blockedError = error;
      $("continue").hidden = false;
    } else if (code === "not_authenticated") {
      await loadSession();
    }
  } finally {
    setBusy(false);
  }
}

function connectedMessage(result, verb) {
  connection = result.connection || connection;
  renderConnection();
  const email = connection && connection.email ? ` as ${connection.email}` : "";
  const switched = result.switchedAccount
    ? " This is a different Calendly account than before: the meetings shown are now its meetings."
    : "";
  setMessage("success", `Calendly ${verb}${email}`, `Your meetings will appear below.${switched}`,
    result.outcome || verb);
}

async function onConnect() {
  await run(async () => {
    const result = await client.connect();
    connectedMessage(result, "connected");
    await loadMeetings();
  });
}

async function onReconnect() {
  await run(async () => {
    const result = await client.reconnect();
    connectedMessage(result, "reconnected");
    await loadMeetings();
  });
}

async function onContinue() {
  const error = blockedError;
  if (!error) {
    return;
  }
  await run(async () => {
    const result = await error.continue();
    connectedMessage(result, result.outcome === "connected" ? "connected" : "reconnected");
    await loadMeetings();
  });
}

async function onDisconnect() {
  await run(async () => {
    // COPY: {connection, subscription_deleted, revoke_failed, already_disconnected}.
    const result = await client.disconnect();
    connection = result.connection ?? null;
    renderConnection();
    const revoke = result.revoke_failed
      ? " Calendly could not be told to revoke the access: remove this app in your Calendly " +
        "settings if you want it gone there too."
      : "";
    setMessage(
      "success",
      "Calendly disconnected",
      `This app no longer reads your Calendly account. Connect again at any time.${revoke}`,
      "disconnected",
    );
  });
}

// ------------------------------------------------------------------ the session
function showSignedOut() {
  stopLive();
  clearInterval(notificationsTimer);
  session = null;
  client = null;
  meetings.clear();
  $("whoami").hidden = true;
  $("workspace").hidden = true;
  $("signin-panel").hidden = false;
  $("signin-user").focus();
}

async function showSignedIn() {
  $("user-name").textContent = session.user;
  $("whoami").hidden = false;
  $("signin-panel").hidden = true;
  $("workspace").hidden = false;
  clearMessage();
  let module;
  try {
    module = await loadClient();
  } catch (error) {
    fatal(`Could not load the calendly-connect client from ${SERVICE_URL}: is the service running? (${error})`);
    return;
  }
  // COPY: one client per signed-in user; `url` is the service's base URL.
  client = module.createCalendlyConnect({ url: SERVICE_URL, getToken });
  pollNotifications();
  notificationsTimer = setInterval(pollNotifications, NOTIFICATIONS_POLL_MS);
  try {
    await refreshConnection();
    await loadMeetings();
  } catch (error) {
    const { title, detail, code } = describeError(error);
    setMessage("error", title, detail, code);
  }
  startLive();
}

async function loadSession() {
  const { status, data } = await hostApi("GET", "/api/session");
  if (status === 200 && data.user) {
    session = data;
    await showSignedIn();
  } else {
    showSignedOut();
  }
}

async function onSignIn(event) {
  event.preventDefault();
  const error = $("signin-error");
  error.hidden = true;
  const { status, data } = await hostApi("POST", "/api/session", { user: $("signin-user").value });
  if (status !== 200) {
    error.textContent = (data && data.detail) || "Could not sign in.";
    error.hidden = false;
    return;
  }
  session = data;
  await showSignedIn();
}

async function onSignOut() {
  await hostApi("DELETE", "/api/session");
  showSignedOut();
}

$("signin-form").addEventListener("submit", onSignIn);
$("sign-out").addEventListener("click", onSignOut);
$("connect").addEventListener("click", onConnect);
$("reconnect").addEventListener("click", onReconnect);
$("disconnect").addEventListener("click", onDisconnect);
$("continue").addEventListener("click", onContinue);
loadSession().catch((error) => fatal(`The page could not start: ${error}`));
