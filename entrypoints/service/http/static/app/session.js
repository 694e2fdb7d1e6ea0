// Who is signed in (per tab: sessionStorage) and the demo users this browser used (localStorage).

const SESSION_KEY = "calendly-connect.session";
const USERS_KEY = "calendly-connect.demo-users";
const DEFAULT_USERS = Object.freeze(["alice", "bob"]);
const MAX_RECENT = 8;

// The ids the service's dev login accepts.
export const USER_ID_PATTERN = /^[A-Za-z0-9_.@-]{1,64}$/;

function read(storage, key) {
  try {
    const raw = storage.getItem(key);
    return raw === null ? null : JSON.parse(raw);
  } catch {
    return null; // storage disabled, or a value we did not write
  }
}

function write(storage, key, value) {
  try {
    if (value === null) {
      storage.removeItem(key);
    } else {
      storage.setItem(key, JSON.stringify(value));
    }
  } catch {
    // Storage disabled or full: the session then lasts until the tab reloads.
  }
}

/** `{token, userId, source: "dev" | "token"}` or null. */
export function loadSession() {
  const value = read(sessionStorage, SESSION_KEY);
  if (
    !value ||
    typeof value.token !== "string" ||
    typeof value.userId !== "string" ||
    (value.source !== "dev" && value.source !== "token")
  ) {
    return null;
  }
  return { token: value.token, userId: value.userId, source: value.source };
}

export function saveSession(session) {
  write(sessionStorage, SESSION_KEY, session);
}

export function clearSession() {
  write(sessionStorage, SESSION_KEY, null);
}

export function recentUsers() {
  const stored = read(localStorage, USERS_KEY);
  const list = Array.isArray(stored) ? stored : DEFAULT_USERS;
  const valid = list.filter((id) => typeof id === "string" && USER_ID_PATTERN.test(id));
  return [...new Set(valid)].slice(0, MAX_RECENT);
}

export function rememberUser(userId) {
  const users = [userId, ...recentUsers().filter((id) => id !== userId)].slice(0, MAX_RECENT);
  write(localStorage, USERS_KEY, users);
}

export function forgetUser(userId) {
  write(localStorage, USERS_KEY, recentUsers().filter((id) => id !== userId));
}

/** The `sub` claim of a JWT, for display only (the service checks the signature). */
export function tokenSubject(token) {
  const parts = token.split(".");
  if (parts.length !== 3) {
    return null;
  }
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims.sub === "string" && claims.sub !== "" ? claims.sub : null;
  } catch {
    return null;
  }
}
