// The page's own words for problems the service reports, by problem type: what happened and
// what the person can do next. Anything else is described as the service words it.

import { describe } from "./api.js";

const BY_TYPE = [
  {
    suffix: "account-already-connected",
    title: "This Calendly account is in use",
    detail:
      "It is connected to another user of this app. Sign in to Calendly with a different account, or disconnect it from the other user first.",
  },
];

function problemType(error) {
  const problem = error && typeof error === "object" ? error.problem : null;
  return problem && typeof problem.type === "string" ? problem.type : "";
}

/** `{title, detail, requestId}` for any error, in the page's words where it has its own. */
export function explain(error) {
  const described = describe(error);
  const type = problemType(error);
  const known = type ? BY_TYPE.find((entry) => type.endsWith(entry.suffix)) : null;
  return known ? { ...described, title: known.title, detail: known.detail } : described;
}
