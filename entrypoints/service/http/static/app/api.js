// The service's JSON API: bearer token in, problem details (RFC 9457) out as readable errors.

let currentToken = () => null;
let renewToken = async () => false;

/**
 * `token()` answers the bearer token; `renew(refusedToken)` is called once on a 401 and answers
 * whether a fresh token is now available (the request is then retried once).
 */
export function configureApi({ token, renew }) {
  currentToken = token;
  renewToken = renew;
}

/** An error worth showing: a short title and a sentence saying what to do. */
export class ApiError extends Error {
  constructor(status, title, detail, problem = null) {
    super(detail ? `${title}: ${detail}` : title);
    this.name = "ApiError";
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.problem = problem;
  }
}

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
  return status >= 500 ? FALLBACK[500] : ["The request failed", `The service answered ${status}.`];
}

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

/** An ApiError from a problem object (from a response body or the OAuth popup's message). */
export function problemError(status, body) {
  const [fallbackTitle, fallbackDetail] = fallbackFor(status);
  const problem = body && typeof body === "object" ? body : {};
  let detail = plain(problem.detail);
  if (Array.isArray(problem.errors)) {
    const messages = problem.errors
      .map((item) => (item && typeof item === "object" ? plain(item.message, 160) : null))
      .filter(Boolean);
    if (messages.length > 0) {
      detail = [detail, ...messages].filter(Boolean).join(" ");
    }
  }
  const requestId = plain(problem.request_id, 128);
  const error = new ApiError(
    typeof problem.status === "number" ? problem.status : status,
    plain(problem.title, 160) || fallbackTitle,
    detail || fallbackDetail,
    problem,
  );
  error.requestId = requestId;
  return error;
}

async function errorFrom(response) {
  const type = response.headers.get("content-type") || "";
  let body = null;
  if (type.includes("json")) {
    try {
      body = await response.json();
    } catch {
      body = null;
    }
  }
  return problemError(response.status, body);
}

export function isAbort(error) {
  return error instanceof DOMException && error.name === "AbortError";
}

/**
 * Call the API. Answers the parsed JSON body; throws ApiError (status 0: no answer at all).
 * `auth: false` sends no token (the dev login itself); `token` overrides the session's.
 */
export async function api(path, options = {}) {
  const { method = "GET", body, auth = true, signal, token: explicitToken } = options;
  const retry = options.retry !== false && explicitToken === undefined;
  const headers = { Accept: "application/json" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
  }
  const token = auth ? (explicitToken ?? currentToken()) : null;
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      // The connect calls set the cookie that binds the OAuth round trip to this browser.
      credentials: "same-origin",
      cache: "no-store",
      signal,
    });
  } catch (error) {
    if (isAbort(error)) {
      throw error;
    }
    throw new ApiError(
      0,
      "Can't reach the service",
      "Check your network connection, then try again.",
    );
  }
  if (response.status === 401 && auth && retry && (await renewToken(token))) {
    return api(path, { ...options, retry: false });
  }
  if (!response.ok) {
    throw await errorFrom(response);
  }
  if (response.status === 204) {
    return null;
  }
  try {
    return await response.json();
  } catch {
    throw new ApiError(response.status, "Unexpected answer", "The service sent something unreadable.");
  }
}

/** `{title, detail}` for any error, worded for people. */
export function describe(error) {
  if (error instanceof ApiError) {
    return { title: error.title, detail: error.detail, requestId: error.requestId || null };
  }
  return {
    title: "Something went wrong",
    detail: "An unexpected error happened in this page. Reload it and try again.",
    requestId: null,
  };
}
