// The page's way to the service. Every API call goes through the calendly-connect client
// (the one the service serves to host apps); only the development sign-in, which runs before
// there is a token, is a plain request here.

import {
  CalendlyConnectError,
  createCalendlyConnect,
  NetworkError,
  ServiceError,
} from "../../client/v1/calendly-connect.js";

/** The prefix the service is mounted under (its ROOT_PATH; "" at the root). */
function basePath() {
  const meta = document.querySelector('meta[name="cc-base-path"]');
  const path = meta ? (meta.getAttribute("content") || "").trim() : "";
  return path.replace(/\/+$/, "");
}

export const BASE_PATH = basePath();
export const SERVICE_URL = location.origin + BASE_PATH;

let currentToken = () => null;
let renewToken = async () => null;
let popupListener = () => {};

/**
 * `token()` answers the session's bearer token; `renew()` (after the service refused it)
 * answers a fresh one, or null when the session is over.
 */
export function configureApi({ token, renew }) {
  currentToken = token;
  renewToken = renew;
}

/** `listener(popup)` is called whenever the client opens the Calendly window. */
export function onPopupOpened(listener) {
  popupListener = listener;
}

// The client opens its popup through this window: the page learns when one is open.
const popupWindow = {
  open(...args) {
    const popup = window.open(...args);
    if (popup) {
      popupListener(popup);
    }
    return popup;
  },
  addEventListener: (...args) => window.addEventListener(...args),
  removeEventListener: (...args) => window.removeEventListener(...args),
};

/** The page's client: connect, reconnect, disconnect, status, meetings, live. */
export const calendly = createCalendlyConnect({
  url: SERVICE_URL,
  getToken: ({ refresh }) => (refresh ? renewToken() : currentToken()),
  window: popupWindow,
});

/**
 * Is `token` accepted? Answers nothing, or throws the client's error (NotAuthenticatedError
 * for a refused token). Any user may list meetings, none yet is an empty list: only a bad
 * token is refused. (Not the connection: its 404 for a user who never connected is logged
 * by browsers.)
 */
export async function checkToken(token) {
  const probe = createCalendlyConnect({
    url: SERVICE_URL,
    getToken: ({ refresh }) => (refresh ? null : token),
  });
  const pages = probe.meetings({ limit: 1 });
  try {
    await pages.next();
  } finally {
    await pages.return();
  }
}

function problemText(value, limit) {
  return typeof value === "string" && value.trim() !== "" ? value.trim().slice(0, limit) : null;
}

/**
 * POST /api/dev/login (no token: it issues one). Answers `{status, body}` for a success and
 * for 404/405 (this deployment has no dev login); throws the client's NetworkError, or a
 * ServiceError with the service's problem details for any other answer.
 */
export async function devLoginRequest(userId) {
  let response;
  try {
    response = await fetch(`${BASE_PATH}/api/dev/login`, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: userId }),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (cause) {
    throw new NetworkError(undefined, {
      title: "Can't reach the service",
      detail: "Check your network connection, then try again.",
      cause,
    });
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.ok) {
    return { status: response.status, body };
  }
  const problem = body && typeof body === "object" ? body : null;
  if (response.status === 404 || response.status === 405) {
    return { status: response.status, body: problem };
  }
  const server = response.status >= 500;
  throw new ServiceError(undefined, {
    status: response.status,
    problem,
    requestId: problemText(problem && problem.request_id, 128),
    title:
      problemText(problem && problem.title, 160) ||
      (server ? "Something went wrong" : "The request failed"),
    detail:
      problemText(problem && problem.detail, 400) ||
      (server
        ? "The service had a problem. Try again in a moment."
        : `The service answered ${response.status}.`),
  });
}

export function isAbort(error) {
  return error instanceof DOMException && error.name === "AbortError";
}

/** `{title, detail, requestId}` for any error, worded for people. */
export function describe(error) {
  if (error instanceof CalendlyConnectError) {
    return { title: error.title, detail: error.detail, requestId: error.requestId || null };
  }
  if (error && typeof error === "object" && typeof error.title === "string") {
    // A message of the page's own ({title, detail}).
    return { title: error.title, detail: error.detail || null, requestId: null };
  }
  return {
    title: "Something went wrong",
    detail: "An unexpected error happened in this page. Reload it and try again.",
    requestId: null,
  };
}
