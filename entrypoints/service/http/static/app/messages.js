// The page's own words for what can go wrong, keyed by the client's error `code` (see the
// client's README: popup_blocked, popup_closed, denied, account_in_use, expired,
// not_authenticated, network, service) or, for any other problem, by its problem type: what
// happened and what the person can do next. Anything else is described as the client (or the
// service's problem details) words it: `error.title`, `error.detail`.

import { describe } from "./api.js";

const BY_CODE = {
  account_in_use: {
    title: "This Calendly account is in use",
    detail:
      "It is connected to another user of this app. Sign in to Calendly with a different account, or disconnect it from the other user first.",
  },
};

// Not failures: the person changed their mind. Said calmly.
const INFO_CODES = new Set(["popup_closed"]);

// Problem types the page words itself, for errors that carry no code of their own.
const BY_PROBLEM_TYPE = [{ suffix: "account-already-connected", code: "account_in_use" }];

function problemType(error) {
  const problem = error && typeof error === "object" ? error.problem : null;
  return problem && typeof problem.type === "string" ? problem.type : "";
}

function codeOf(error) {
  const code = error && typeof error === "object" && typeof error.code === "string" ? error.code : "";
  if (BY_CODE[code]) {
    return code;
  }
  const type = problemType(error);
  const known = type ? BY_PROBLEM_TYPE.find((entry) => type.endsWith(entry.suffix)) : null;
  return known ? known.code : code;
}

/** `{tone, title, detail, requestId}` for any error, in the page's words where it has its own. */
export function explain(error) {
  const described = describe(error);
  const code = codeOf(error);
  const tone = INFO_CODES.has(code) ? "info" : "error";
  const own = BY_CODE[code];
  return own ? { tone, ...described, title: own.title, detail: own.detail } : { tone, ...described };
}
