// Dates in the browser's locale and time zone, and the service's enums in words.

const locale = undefined; // the browser's

export function parseDate(value) {
  if (typeof value !== "string") {
    return null;
  }
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

const dayFormat = new Intl.DateTimeFormat(locale, { weekday: "short", day: "numeric", month: "short" });
const dayYearFormat = new Intl.DateTimeFormat(locale, {
  weekday: "short",
  day: "numeric",
  month: "short",
  year: "numeric",
});
const timeFormat = new Intl.DateTimeFormat(locale, { hour: "numeric", minute: "2-digit" });
const zoneFormat = new Intl.DateTimeFormat(locale, { timeZoneName: "short" });
const fullFormat = new Intl.DateTimeFormat(locale, { dateStyle: "full", timeStyle: "short" });
const mediumFormat = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" });
const dateOnlyFormat = new Intl.DateTimeFormat(locale, { dateStyle: "medium" });
const monthFormat = new Intl.DateTimeFormat(locale, { month: "short" });
const dayNumberFormat = new Intl.DateTimeFormat(locale, { day: "numeric" });
const relativeFormat = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });

/** "Tue, 5 Mar" (with the year when it is not this year). */
export function formatDay(date) {
  return (date.getFullYear() === new Date().getFullYear() ? dayFormat : dayYearFormat).format(date);
}

/** The parts of a calendar tile: "Mar", "5". */
export function formatTile(date) {
  return { month: monthFormat.format(date), day: dayNumberFormat.format(date) };
}

export function formatTime(date) {
  return timeFormat.format(date);
}

/** "14:30 – 15:00" (or one time when the end is unknown). */
export function formatTimeRange(start, end) {
  if (!end || end <= start) {
    return formatTime(start);
  }
  if (typeof timeFormat.formatRange === "function") {
    try {
      return timeFormat.formatRange(start, end);
    } catch {
      // fall through
    }
  }
  return `${formatTime(start)} – ${formatTime(end)}`;
}

/** The short name of the browser's zone at that instant ("CET", "GMT+2"). */
export function zoneName(date) {
  const part = zoneFormat.formatToParts(date).find((p) => p.type === "timeZoneName");
  return part ? part.value : "";
}

export function formatFull(date) {
  return fullFormat.format(date);
}

export function formatMedium(date) {
  return mediumFormat.format(date);
}

export function formatDate(date) {
  return dateOnlyFormat.format(date);
}

const UNITS = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
];

/** "in 3 hours", "2 days ago", "now". */
export function formatRelative(date, now = new Date()) {
  const seconds = (date.getTime() - now.getTime()) / 1000;
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) {
      return relativeFormat.format(Math.round(seconds / size), unit);
    }
  }
  return relativeFormat.format(0, "minute");
}

// Calendly's location types; anything else is shown from its own name.
const LOCATION_LABELS = {
  physical: "In person",
  outbound_call: "Phone call",
  inbound_call: "Phone call",
  google_conference: "Google Meet",
  zoom: "Zoom",
  zoom_conference: "Zoom",
  gotomeeting: "GoTo Meeting",
  gotomeeting_conference: "GoTo Meeting",
  microsoft_teams_conference: "Microsoft Teams",
  webex_conference: "Webex",
  custom: "Custom location",
  ask_invitee: "Location chosen by the invitee",
};

export function humanize(identifier) {
  if (typeof identifier !== "string" || identifier.trim() === "") {
    return null;
  }
  const words = identifier.replace(/[_-]+/g, " ").trim().toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function locationLabel(type) {
  if (typeof type === "string" && Object.prototype.hasOwnProperty.call(LOCATION_LABELS, type)) {
    return LOCATION_LABELS[type];
  }
  return humanize(type) || "Location";
}

export function locationKind(type) {
  if (type === "physical") {
    return "pin";
  }
  if (type === "outbound_call" || type === "inbound_call") {
    return "phone";
  }
  if (typeof type === "string" && /conference|zoom|meeting|meet|teams|webex/.test(type)) {
    return "video";
  }
  return "pin";
}

export const CONNECTION_STATUS = {
  active: { label: "Connected", tone: "success" },
  needs_reauth: { label: "Needs attention", tone: "warning" },
  disconnected: { label: "Not connected", tone: "neutral" },
};

export const WEBHOOK_STATUS = {
  active: "Instant: Calendly sends every change as it happens",
  unavailable_plan: "Periodic: webhooks need a paid Calendly plan",
  disabled: "Stopped: Calendly disabled the webhook",
  missing: "Not set up",
};

export function cancelerLabel(type) {
  if (type === "host") {
    return "the host";
  }
  if (type === "invitee") {
    return "the invitee";
  }
  return humanize(type);
}
