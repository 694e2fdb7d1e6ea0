// The page: sign-in, hash routes (#/settings/calendar, #/meetings[/<id>]) and live updates.

import { configureApi } from "./api.js";
import { renderCalendar } from "./calendar.js";
import { flow } from "./connect-flow.js";
import { h } from "./dom.js";
import { liveIsOpen, startLive, stopLive } from "./live.js";
import { renderMeetings } from "./meetings.js";
import { clearSession, loadSession, saveSession } from "./session.js";
import { devLogin, devLoginAvailable, renderSignIn } from "./signin.js";
import { connection, meetings } from "./state.js";
import { spinner } from "./ui.js";

const DEFAULT_HASH = "#/settings/calendar";
const MEETINGS_HASH = "#/meetings";
const APP_NAME = "Calendly Connect";
const TITLES = { calendar: "Calendar settings", meetings: "Meetings", signin: "Sign in" };

const $ = (id) => document.getElementById(id);
const els = {
  main: $("main"),
  nav: $("sidenav"),
  account: $("account"),
  accountName: $("account-name"),
  accountAvatar: $("account-avatar"),
  accountDemo: $("account-demo"),
  signOut: $("sign-out"),
  calendarAlert: $("nav-calendar-alert"),
  skip: $("skip-link"),
};

const app = {
  session: loadSession(),
  devLogin: null, // true | false once known
  view: null, // {name, cleanup, focus?}
  renewing: null,
  landingFocus: false,
};

// ------------------------------------------------------------------ session
// The client asks for the token with every request, and for a fresh one (`renew`) after the
// service refused it or the live stream said it expired.
configureApi({ token: () => (app.session ? app.session.token : null), renew: renewSession });

/**
 * The token was refused or expired: a dev session gets a fresh token for the same user (the
 * answer); a pasted token ends the session (null).
 */
function renewSession() {
  const session = app.session;
  if (!session) {
    return Promise.resolve(null);
  }
  if (app.renewing) {
    return app.renewing;
  }
  app.renewing = (async () => {
    if (session.source === "dev") {
      try {
        const fresh = await devLogin(session.userId);
        if (fresh && app.session === session) {
          app.session = fresh;
          saveSession(fresh);
          return fresh.token;
        }
      } catch {
        // fall through: sign out
      }
    }
    if (app.session === session) {
      signOut({
        tone: "info",
        title: "Your session has ended",
        detail: "Sign in again to continue where you left off.",
      });
    }
    return null;
  })().finally(() => {
    app.renewing = null;
  });
  return app.renewing;
}

function signIn(session) {
  app.session = session;
  saveSession(session);
  showAccount();
  startLive();
  // With no route in the URL, render() lands by the connection: Meetings or Settings.
  render({ focus: true });
}

/** `forgetRoute`: the user signed out, so the next sign-in lands by its own connection
 * (an ended session keeps the route, to continue there after signing in again). */
function signOut(notice = null, { forgetRoute = false } = {}) {
  stopLive();
  flow.reset();
  connection.reset();
  meetings.reset();
  clearSession();
  app.session = null;
  if (forgetRoute && location.hash) {
    history.replaceState(null, "", location.pathname + location.search);
  }
  showAccount();
  render({ focus: true, notice });
}

function showAccount() {
  const session = app.session;
  els.account.hidden = !session;
  els.nav.hidden = !session;
  document.body.classList.toggle("signed-in", Boolean(session));
  if (session) {
    els.accountName.textContent = session.userId;
    els.accountAvatar.textContent = session.userId.charAt(0).toUpperCase();
    els.accountDemo.hidden = session.source !== "dev";
  }
}

els.signOut.addEventListener("click", () => signOut(null, { forgetRoute: true }));

// ------------------------------------------------------------------- routes
function routeOf(hash) {
  if (!hash.startsWith("#/")) {
    return null;
  }
  const path = hash.slice(1).replace(/\/+$/, "");
  if (path === "/settings/calendar" || path === "/settings") {
    return { name: "calendar" };
  }
  if (path === "/meetings") {
    return { name: "meetings", focus: null };
  }
  const match = /^\/meetings\/([^/]+)$/.exec(path);
  if (match) {
    try {
      return { name: "meetings", focus: decodeURIComponent(match[1]) };
    } catch {
      return { name: "meetings", focus: null };
    }
  }
  return null;
}

function markNav(name) {
  for (const link of els.nav.querySelectorAll(".nav-link")) {
    if (link.dataset.route === name) {
      link.setAttribute("aria-current", "page");
    } else {
      link.removeAttribute("aria-current");
    }
  }
}

function focusHeading() {
  const heading = els.main.querySelector("#page-title");
  (heading || els.main).focus();
}

async function render({ focus = false, notice = null } = {}) {
  if (!app.session) {
    if (app.view) {
      app.view.cleanup();
      app.view = null;
    }
    if (app.devLogin === null) {
      app.devLogin = await devLoginAvailable();
    }
    if (app.session) {
      return; // signed in meanwhile
    }
    markNav(null);
    document.title = `${TITLES.signin} · ${APP_NAME}`;
    renderSignIn(els.main, { devLogin: app.devLogin, notice, onSignedIn: signIn });
    app.view = { name: "signin", cleanup() {} };
    if (focus) {
      focusHeading();
    }
    return;
  }
  const route = routeOf(location.hash);
  if (!route) {
    // No route named (or an in-page anchor with no view yet): land somewhere useful.
    const noView = !app.view || app.view.name === "signin" || app.view.name === "landing";
    if (location.hash === "" || location.hash === "#" || noView) {
      land({ focus });
    }
    return;
  }
  if (app.view && app.view.name === route.name && route.name === "meetings" && app.view.focus) {
    if (route.focus) {
      app.view.focus(route.focus);
    } else if (focus) {
      focusHeading();
    }
    return;
  }
  if (app.view) {
    app.view.cleanup();
  }
  markNav(route.name);
  document.title = `${TITLES[route.name]} · ${APP_NAME}`;
  if (route.name === "calendar") {
    const cleanup = renderCalendar(els.main);
    app.view = { name: "calendar", cleanup };
  } else {
    const view = renderMeetings(els.main, { focusMeeting: route.focus });
    app.view = { name: "meetings", cleanup: view.cleanup, focus: view.focus };
  }
  window.scrollTo(0, 0);
  if (focus && !route.focus) {
    focusHeading();
  }
}

/** Meetings when Calendly is connected, Settings → Calendar otherwise (also when the
 * connection can't be read: that page says why and offers to try again). */
function land({ focus }) {
  if (!connection.loaded && !connection.error) {
    app.landingFocus = app.landingFocus || focus;
    if (!app.view || app.view.name !== "landing") {
      if (app.view) {
        app.view.cleanup();
      }
      markNav(null);
      document.title = APP_NAME;
      els.main.replaceChildren(h("p", { class: "loading" }, spinner(), "Loading…"));
      app.view = { name: "landing", cleanup() {} };
      if (focus) {
        els.main.focus();
      }
    }
    connection.ensure();
    return; // rendered again when the connection is known
  }
  const landingFocus = app.landingFocus;
  app.landingFocus = false;
  history.replaceState(null, "", connection.connected ? MEETINGS_HASH : DEFAULT_HASH);
  render({ focus: focus || landingFocus });
}

connection.subscribe(() => {
  if (app.session && app.view && app.view.name === "landing") {
    render({ focus: app.landingFocus });
  }
});

window.addEventListener("hashchange", () => render({ focus: true }));

els.skip.addEventListener("click", (event) => {
  event.preventDefault(); // "#main" is not a route
  focusHeading();
});

// Back from the Calendly window (or another tab): the connection may have changed.
let lastVisibleRefresh = 0;
document.addEventListener("visibilitychange", () => {
  // A live stream says every change itself.
  if (document.visibilityState === "visible" && app.session && connection.loaded && !liveIsOpen()) {
    const now = Date.now();
    if (now - lastVisibleRefresh > 5000) {
      lastVisibleRefresh = now;
      connection.load({ quiet: true }).catch(() => {});
    }
  }
});

// The nav shows when the Calendly connection needs attention.
connection.subscribe(() => {
  const value = connection.value;
  const attention = Boolean(
    value &&
      (value.status === "needs_reauth" ||
        (value.status === "active" && (value.webhook_status === "disabled" || value.webhook_status === "missing"))),
  );
  els.calendarAlert.hidden = !attention;
});

// Another tab signed this browser's demo user list? Nothing to do: sessions are per tab.

// -------------------------------------------------------------------- start
showAccount();
if (app.session) {
  startLive();
}
render({ focus: false });
