// Meetings: upcoming (soonest first) and past (latest first), updated live.

import { describe } from "./api.js";
import { h, icon, ICONS, safeExternalUrl, text } from "./dom.js";
import {
  cancelerLabel,
  formatDay,
  formatFull,
  formatRelative,
  formatTile,
  formatTimeRange,
  locationKind,
  locationLabel,
  parseDate,
  zoneName,
} from "./format.js";
import { connection, meetings } from "./state.js";
import { pageHeader, preserveFocus, spinner } from "./ui.js";

export function meetingElementId(id) {
  return `meeting-${id}`;
}

export function meetingHref(id) {
  return `#/meetings/${encodeURIComponent(id)}`;
}

function shortWhen(meeting) {
  const start = parseDate(meeting.start_time);
  return start ? `${formatDay(start)}, ${formatTimeRange(start, null)}` : "a time not known yet";
}

/** Index invitee URIs to their meetings, for the links between rescheduled meetings. */
function inviteeIndex(all) {
  const index = new Map();
  for (const meeting of all) {
    for (const invitee of Array.isArray(meeting.invitees) ? meeting.invitees : []) {
      if (invitee && typeof invitee.invitee_uri === "string") {
        index.set(invitee.invitee_uri, meeting);
      }
    }
  }
  return index;
}

function cancellationLine(cancellation) {
  if (!cancellation || typeof cancellation !== "object") {
    return null;
  }
  const who = text(cancellation.canceled_by);
  const role = cancelerLabel(cancellation.canceler_type);
  let by = "Canceled";
  if (who && role) {
    by = `Canceled by ${who} (${role})`;
  } else if (who || role) {
    by = `Canceled by ${who || role}`;
  }
  const reason = text(cancellation.reason);
  return h(
    "p",
    { class: "meeting-cancel" },
    h("span", {}, by),
    reason ? h("span", { class: "meeting-reason" }, ` — “${reason}”`) : null,
  );
}

function badge(label, tone) {
  return h("span", { class: ["badge", `badge--${tone}`] }, label);
}

function locationLine(location, joinable, meetingName) {
  if (!location || typeof location !== "object") {
    return null;
  }
  const type = typeof location.type === "string" ? location.type : null;
  const where = text(location.location);
  const join = joinable ? safeExternalUrl(location.join_url) : null;
  const label = locationLabel(type);
  return h(
    "div",
    { class: "meeting-location" },
    icon(ICONS[locationKind(type)] || ICONS.pin, { size: 16, className: "icon muted-icon" }),
    h("span", {}, label),
    where && where !== label ? h("span", { class: "muted location-detail" }, where) : null,
    join
      ? h(
          "a",
          { class: "button button--small button--primary join-link", href: join, target: "_blank", rel: "noopener noreferrer" },
          "Join",
          h("span", { class: "visually-hidden" }, ` ${meetingName} (opens in a new tab)`),
          icon(ICONS.external, { size: 14 }),
        )
      : null,
  );
}

function rescheduleLinks(invitee, index, self) {
  const links = [];
  if (invitee.rescheduled || invitee.new_invitee_uri) {
    const target = typeof invitee.new_invitee_uri === "string" ? index.get(invitee.new_invitee_uri) : null;
    links.push(
      target && target !== self
        ? h("a", { class: "reschedule-link", href: meetingHref(target.id) }, icon(ICONS.arrowRight, { size: 14 }), `Rescheduled to ${shortWhen(target)}`)
        : h("span", { class: "reschedule-link muted" }, "Rescheduled to a new time"),
    );
  }
  if (typeof invitee.old_invitee_uri === "string") {
    const source = index.get(invitee.old_invitee_uri);
    links.push(
      source && source !== self
        ? h("a", { class: "reschedule-link", href: meetingHref(source.id) }, icon(ICONS.arrowLeft, { size: 14 }), `Rescheduled from ${shortWhen(source)}`)
        : h("span", { class: "reschedule-link muted" }, "Rescheduled from an earlier time"),
    );
  }
  return links;
}

function inviteeItem(invitee, meeting, index) {
  const name = text(invitee.name);
  const email = text(invitee.email);
  const initial = (name || email || "?").trim().charAt(0).toUpperCase();
  const meetingCanceled = meeting.status === "canceled";
  const inviteeCanceled = invitee.status === "canceled" && !meetingCanceled;
  // Calendly reports who canceled on the invitee; show it there unless the meeting says it.
  const ownCancellation =
    invitee.status === "canceled" && !(meetingCanceled && meeting.cancellation)
      ? cancellationLine(invitee.cancellation)
      : null;
  return h(
    "li",
    { class: "invitee" },
    h("span", { class: "avatar avatar--small", "aria-hidden": "true" }, initial),
    h(
      "div",
      { class: "invitee-body" },
      h(
        "p",
        { class: "invitee-line" },
        h("span", { class: "invitee-name" }, name || email || "Unnamed invitee"),
        name && email ? h("span", { class: "muted invitee-email" }, email) : null,
        invitee.no_show ? badge("No-show", "warning") : null,
        inviteeCanceled ? badge("Canceled", "danger") : null,
      ),
      ownCancellation,
      ...rescheduleLinks(invitee, index, meeting),
    ),
  );
}

function meetingView(meeting, index, now) {
  const start = parseDate(meeting.start_time);
  const end = parseDate(meeting.end_time);
  const canceled = meeting.status === "canceled";
  const ongoing = !canceled && start && end && start <= now && now < end;
  const over = end ? end <= now : start ? start < now : false;
  // A delivery in Calendly's older shape names the event only: its details are read from
  // Calendly within seconds ("pending"), or Calendly would not show it ("unavailable").
  const pending = meeting.details === "pending";
  const unavailable = meeting.details === "unavailable";
  const name = text(meeting.name) || (pending ? "Meeting details on the way from Calendly" : "Untitled meeting");
  const titleId = `${meetingElementId(meeting.id)}-title`;
  const invitees = Array.isArray(meeting.invitees) ? meeting.invitees.filter((i) => i && typeof i === "object") : [];
  const tile = start ? formatTile(start) : null;
  return h(
    "li",
    { class: "meeting-item" },
    h(
      "article",
      {
        class: ["meeting", canceled && "is-canceled", over && "is-over"],
        id: meetingElementId(meeting.id),
        tabindex: "-1",
        "aria-labelledby": titleId,
      },
      h(
        "div",
        { class: "meeting-tile", "aria-hidden": "true" },
        h("span", { class: "meeting-tile-month" }, tile ? tile.month : "—"),
        h("span", { class: "meeting-tile-day" }, tile ? tile.day : "?"),
      ),
      h(
        "div",
        { class: "meeting-main" },
        h(
          "div",
          { class: "meeting-top" },
          h("h3", { class: "meeting-title", id: titleId }, name),
          ongoing ? badge("Happening now", "success") : null,
          canceled ? badge("Canceled", "danger") : null,
          pending ? badge("Updating from Calendly", "neutral") : null,
          unavailable ? badge("Details unavailable", "warning") : null,
        ),
        h(
          "p",
          { class: "meeting-when" },
          start
            ? [
                h(
                  "time",
                  { datetime: start.toISOString(), title: formatFull(start) },
                  `${formatDay(start)} · ${formatTimeRange(start, end)} ${zoneName(start)}`.trim(),
                ),
                h("span", { class: "muted" }, ` · ${formatRelative(start, now)}`),
              ]
            : h("span", { class: "muted" }, pending ? "Time on the way from Calendly" : "Time not known yet"),
        ),
        unavailable
          ? h("p", { class: "muted small meeting-details-error" },
              `Calendly would not show this event's details (${text(meeting.details_error) || "no reason given"}). They appear if Calendly sends them again.`)
          : pending && text(meeting.details_error)
            ? h("p", { class: "muted small meeting-details-error" },
                `Calendly did not give this event's details yet (${text(meeting.details_error)}).`)
            : null,
        canceled ? cancellationLine(meeting.cancellation) : null,
        locationLine(meeting.location, !canceled && !over, name),
        invitees.length > 0
          ? h("ul", { class: "invitees", "aria-label": `Invitees of ${name}` }, invitees.map((i) => inviteeItem(i, meeting, index)))
          : h("p", { class: "muted small" }, "No invitee details yet."),
      ),
    ),
  );
}

/** Upcoming (and happening now) soonest first; past latest first; undated last. */
function groupMeetings(all, now) {
  const upcoming = [];
  const past = [];
  const undated = [];
  for (const meeting of all) {
    const start = parseDate(meeting.start_time);
    const end = parseDate(meeting.end_time);
    if (!start) {
      undated.push(meeting);
    } else if (start >= now || (meeting.status !== "canceled" && end && end > now)) {
      upcoming.push(meeting);
    } else {
      past.push(meeting);
    }
  }
  const key = (m) => parseDate(m.start_time).getTime();
  upcoming.sort((a, b) => key(a) - key(b) || a.id.localeCompare(b.id));
  past.sort((a, b) => key(b) - key(a) || a.id.localeCompare(b.id));
  return { upcoming, past, undated };
}

/** Make `list`'s children exactly `items`, moving only what is out of place (focus survives). */
function reconcile(list, items) {
  items.forEach((item, position) => {
    const current = list.children[position];
    if (current !== item) {
      list.insertBefore(item, current || null);
    }
  });
  while (list.children.length > items.length) {
    list.lastElementChild.remove();
  }
}

function emptyState() {
  const connected = connection.connected;
  const email = connected ? text(connection.value.email) : null;
  if (connection.loaded && !connected) {
    return h(
      "div",
      { class: "empty" },
      h("span", { class: "empty-icon", "aria-hidden": "true" }, icon(ICONS.calendar, { size: 28 })),
      h("h2", {}, "Connect Calendly to see your meetings"),
      h("p", {}, "Once your Calendly account is connected, every meeting booked with you shows up here within seconds, without reloading the page."),
      h("a", { class: "button button--primary", href: "#/settings/calendar" }, "Go to Calendar settings"),
    );
  }
  return h(
    "div",
    { class: "empty" },
    h("span", { class: "empty-icon", "aria-hidden": "true" }, icon(ICONS.calendar, { size: 28 })),
    h("h2", {}, "No meetings yet"),
    h(
      "p",
      {},
      email
        ? `When someone books time with ${email} on Calendly, the meeting shows up here within seconds, without reloading the page.`
        : "When someone books time with you on Calendly, the meeting shows up here within seconds, without reloading the page.",
    ),
    h(
      "p",
      { class: "muted" },
      "Trying this out with the Calendly sandbox? Book a meeting for the connected sandbox user there (on ",
      sandboxBookingLink(connection.value),
      " or through its control API); it arrives here the same way as a real booking.",
    ),
  );
}

/** The Calendly sandbox's address, when the service runs against it and the page shell says. */
function sandboxUrl() {
  const meta = document.querySelector('meta[name="cc-sandbox-url"]');
  const url = meta ? safeExternalUrl(meta.getAttribute("content")) : null;
  return url ? url.replace(/\/+$/, "") : null;
}

/** A link to the sandbox's booking page of the connected user (its users when the account is
 * not one of the sandbox's); plain words when the page does not know the sandbox. */
function sandboxBookingLink(value) {
  const label = "the sandbox's booking page";
  const base = sandboxUrl();
  if (!base) {
    return label;
  }
  let href = `${base}/_sandbox/`;
  const uri = value && typeof value.calendly_user_uri === "string" ? value.calendly_user_uri : "";
  const id = uri.startsWith(`${base}/users/`) ? uri.slice(`${base}/users/`.length) : "";
  if (/^[A-Za-z0-9_-]+$/.test(id)) {
    href = `${base}/_sandbox/users/${id}/book`;
  }
  return h(
    "a",
    { href, target: "_blank", rel: "noopener noreferrer" },
    label,
    h("span", { class: "visually-hidden" }, " (opens in a new tab)"),
  );
}

function loadMoreButton(label, key, state, onClick) {
  return h(
    "div",
    { class: "list-footer" },
    state.error ? h("p", { class: "inline-error", role: "alert" }, `${describe(state.error).title}. ${describe(state.error).detail}`) : null,
    h(
      "button",
      {
        type: "button",
        class: "button button--secondary",
        "data-focus-key": key,
        "aria-disabled": state.loading ? "true" : null,
        "aria-busy": state.loading ? "true" : null,
        on: { click: () => !state.loading && onClick() },
      },
      state.loading ? spinner() : null,
      state.loading ? "Loading…" : label,
    ),
  );
}

/** Render into `main`; `focusMeeting` is a meeting id to scroll to. Answers a cleanup function. */
export function renderMeetings(main, { focusMeeting = null } = {}) {
  const content = h("div", { class: "meetings" });
  const items = new Map(); // id -> {signature, li}
  let pendingFocus = focusMeeting;

  main.replaceChildren(
    pageHeader({
      title: "Meetings",
      lead: "Meetings booked with you on Calendly. New bookings and changes appear here as they happen.",
    }),
    content,
  );

  const upcomingList = h("ol", { class: "meeting-list" });
  const pastList = h("ol", { class: "meeting-list" });
  const undatedList = h("ol", { class: "meeting-list" });

  function itemFor(meeting, index, now) {
    const element = meetingView(meeting, index, now);
    // Rebuilt on every render but swapped in only when something visible changed.
    const signature = element.outerHTML;
    const known = items.get(meeting.id);
    if (known && known.signature === signature) {
      return known.li;
    }
    if (known && known.li.contains(document.activeElement)) {
      requestAnimationFrame(() => element.querySelector("article").focus({ preventScroll: true }));
    }
    items.set(meeting.id, { signature, li: element });
    return element;
  }

  // Persistent sections: re-rendering never moves the lists, so focus inside them survives.
  function makeSection(id, title, list) {
    const count = h("span", { class: "count" });
    const body = h("div", { class: "group-body" });
    const footer = h("div", { class: "group-footer" });
    const element = h(
      "section",
      { class: "meeting-group", "aria-labelledby": id },
      h("h2", { id, class: "group-title" }, title, count),
      body,
      footer,
    );
    const empty = h("p", { class: "muted group-empty" });
    return {
      element,
      /** `counted`: the number shown by the title (all the items unless said). */
      update(lis, emptyText, more, counted = lis.length) {
        reconcile(list, lis);
        count.textContent = String(counted);
        count.setAttribute("aria-label", `${counted} ${counted === 1 ? "meeting" : "meetings"}`);
        const wanted = lis.length > 0 ? list : empty;
        empty.textContent = emptyText;
        if (body.firstChild !== wanted) {
          body.replaceChildren(wanted);
        }
        footer.replaceChildren(...(more ? [more] : []));
      },
    };
  }

  const sections = {
    upcoming: makeSection("upcoming-title", "Upcoming", upcomingList),
    past: makeSection("past-title", "Past", pastList),
    undated: makeSection("undated-title", "Time not known yet", undatedList),
  };
  const listView = h("div", { class: "meeting-groups" });

  function render() {
    const all = meetings.meetings;
    if (all.length === 0) {
      if (meetings.status === "error") {
        const { title, detail } = describe(meetings.error);
        content.replaceChildren(
          h(
            "div",
            { class: "banner banner--warning", role: "alert" },
            icon(ICONS.alert, { className: "banner-icon" }),
            h("div", { class: "banner-body" }, h("p", { class: "banner-title" }, `Couldn't load your meetings: ${title}`), h("p", {}, detail)),
            h("div", { class: "banner-action" }, h("button", { type: "button", class: "button button--secondary", on: { click: () => meetings.load() } }, "Try again")),
          ),
        );
        return;
      }
      if (meetings.status !== "ready") {
        content.replaceChildren(h("p", { class: "loading" }, spinner(), "Loading your meetings…"));
        return;
      }
      content.replaceChildren(emptyState());
      return;
    }
    const now = new Date();
    const index = inviteeIndex(all);
    const groups = groupMeetings(all, now);
    const seen = new Set(all.map((m) => m.id));
    for (const id of items.keys()) {
      if (!seen.has(id)) {
        items.delete(id);
      }
    }
    const upcoming = groups.upcoming.map((m) => itemFor(m, index, now));
    const past = groups.past.map((m) => itemFor(m, index, now));
    const undated = groups.undated.map((m) => itemFor(m, index, now));
    const ready = meetings.status === "ready";
    preserveFocus(main, () => {
      if (content.firstChild !== listView) {
        content.replaceChildren(listView);
      }
      sections.upcoming.update(
        upcoming,
        ready ? "Nothing scheduled. New bookings will show up here." : "Loading…",
        meetings.upcoming.more ? loadMoreButton("Load more", "more-upcoming", meetings.upcoming, () => meetings.loadMoreUpcoming().then(() => keepFocusIn(upcomingList))) : null,
        // Canceled ones stay listed (marked canceled) but are not coming up: not counted.
        groups.upcoming.filter((m) => m.status !== "canceled").length,
      );
      sections.past.update(
        past,
        ready ? "No past meetings in the last weeks." : "Loading…",
        meetings.past.hasEarlier ? loadMoreButton("Show earlier meetings", "more-past", meetings.past, () => meetings.loadEarlier().then(() => keepFocusIn(pastList))) : null,
      );
      sections.undated.update(undated, "", null);
      const wanted = [sections.upcoming.element, sections.past.element];
      if (undated.length > 0) {
        wanted.push(sections.undated.element);
      }
      reconcile(listView, wanted);
    });
    if (pendingFocus !== null) {
      const target = document.getElementById(meetingElementId(pendingFocus));
      if (target) {
        pendingFocus = null;
        target.scrollIntoView({ block: "center" });
        target.focus({ preventScroll: true });
        flash(target);
      } else if (meetings.status === "ready") {
        pendingFocus = null;
      }
    }
  }

  // The button that had focus is gone (nothing more to load): continue at the list's end.
  function keepFocusIn(list) {
    if (!main.contains(document.activeElement) || document.activeElement === document.body) {
      const articles = list.querySelectorAll("article");
      const last = articles[articles.length - 1];
      if (last) {
        last.focus();
      }
    }
  }

  function flash(article) {
    article.classList.remove("is-fresh");
    void article.offsetWidth; // restart the animation
    article.classList.add("is-fresh");
  }

  const off = meetings.subscribe((detail) => {
    render();
    if (detail && detail.fresh && Array.isArray(detail.changed)) {
      for (const meeting of detail.changed) {
        const article = document.getElementById(meetingElementId(meeting.id));
        if (article) {
          flash(article);
        }
      }
    }
  });
  const offConnection = connection.subscribe(() => {
    if (meetings.meetings.length === 0) {
      render();
    }
  });
  // Upcoming becomes past, "in 5 minutes" becomes "in 4 minutes".
  const clock = setInterval(render, 60000);
  render();
  if (meetings.status === "idle" || meetings.status === "error") {
    meetings.load();
  }
  connection.ensure();
  return {
    cleanup() {
      off();
      offConnection();
      clearInterval(clock);
    },
    focus(id) {
      pendingFocus = id;
      render();
    },
  };
}
