// Signing in: demo users through the dev login when the deployment has it, else a bearer token.

import { ServiceError } from "../../client/v1/calendly-connect.js";
import { checkToken, describe, devLoginRequest } from "./api.js";
import { h, icon, ICONS, replaceChildren } from "./dom.js";
import { forgetUser, recentUsers, rememberUser, tokenSubject, USER_ID_PATTERN } from "./session.js";
import { messageBox, setMessage, spinner } from "./ui.js";

/** POST /api/dev/login; answers the session, or null when the deployment has no dev login. */
export async function devLogin(userId) {
  const { status, body } = await devLoginRequest(userId);
  if (status === 404 || status === 405) {
    return null;
  }
  const token = body && (body.access_token || body.token);
  if (typeof token !== "string" || token === "") {
    throw new ServiceError(undefined, {
      status,
      title: "Unexpected answer",
      detail: "The sign-in answer had no token.",
    });
  }
  return { token, userId, source: "dev" };
}

/** Is the dev login there? The page says so when it was served by the service. */
export async function devLoginAvailable() {
  const meta = document.querySelector('meta[name="cc-dev-login"]');
  const declared = meta ? meta.getAttribute("content") : "auto";
  if (declared === "enabled" || declared === "disabled") {
    return declared === "enabled";
  }
  try {
    // An invalid id: 400 when the route exists, 404 when it does not; no token is issued.
    const { status } = await devLoginRequest("");
    return !(status === 404 || status === 405);
  } catch {
    return true; // refused (400) or unanswered: the route is there, or may be
  }
}

function normalizeToken(raw) {
  return raw.trim().replace(/^bearer\s+/i, "").trim();
}

function avatar(name) {
  return h("span", { class: "avatar", "aria-hidden": "true" }, name.charAt(0).toUpperCase());
}

/**
 * Render the sign-in screen into `main`. `onSignedIn(session)` finishes; `notice` is shown
 * first (e.g. "your session expired").
 */
export function renderSignIn(main, { devLogin: devEnabled, notice, onSignedIn }) {
  const status = h("div", { class: "messages", role: "status", "aria-live": "polite" });
  const alert = h("div", { class: "messages", role: "alert" });
  const body = h("div", { class: "signin-body" });
  let busy = false;

  const card = h(
    "section",
    { class: "card signin-card", "aria-labelledby": "page-title" },
    h(
      "div",
      { class: "signin-header" },
      h("span", { class: "brand-mark brand-mark--large", "aria-hidden": "true" }, icon(ICONS.calendar, { size: 26 })),
      h("h1", { id: "page-title", tabindex: "-1" }, "Sign in"),
    ),
    status,
    alert,
    body,
  );
  main.replaceChildren(
    h(
      "div",
      { class: "signin" },
      card,
      h("p", { class: "signin-footnote" }, "Each browser tab keeps its own sign-in, so two tabs can be two different users."),
    ),
  );

  function showError(error) {
    setMessage(alert, messageBox({ tone: "error", ...describe(error) }));
  }

  function clearMessages() {
    status.replaceChildren();
    alert.replaceChildren();
  }

  function setBusy(button, label) {
    busy = true;
    main.querySelectorAll("button, input, textarea").forEach((control) => {
      control.setAttribute("aria-disabled", "true");
    });
    if (button) {
      button.setAttribute("aria-busy", "true");
      button.replaceChildren(spinner(), label);
    }
  }

  function clearBusy() {
    busy = false;
    main.querySelectorAll("[aria-disabled]").forEach((control) => control.removeAttribute("aria-disabled"));
    main.querySelectorAll("[aria-busy]").forEach((control) => control.removeAttribute("aria-busy"));
  }

  async function signInAs(userId, button, originalLabel) {
    if (busy) {
      return;
    }
    clearMessages();
    setBusy(button, "Signing in…");
    try {
      const session = await devLogin(userId);
      if (session === null) {
        devEnabled = false;
        renderBody();
        setMessage(
          status,
          messageBox({
            tone: "info",
            title: "Demo sign-in is turned off",
            detail: "This deployment signs users in through its host app. Paste a token from the host app instead.",
          }),
        );
        return;
      }
      rememberUser(userId);
      onSignedIn(session);
    } catch (error) {
      clearBusy();
      if (button) {
        button.replaceChildren(...originalLabel);
      }
      showError(error);
    }
  }

  async function signInWithToken(raw, button) {
    if (busy) {
      return;
    }
    clearMessages();
    const token = normalizeToken(raw);
    if (!token) {
      showError({ title: "Paste a token first", detail: "The token field is empty." });
      return;
    }
    setBusy(button, "Checking…");
    try {
      await checkToken(token);
      onSignedIn({ token, userId: tokenSubject(token) || "token user", source: "token" });
    } catch (error) {
      clearBusy();
      button.replaceChildren("Sign in");
      if (error && error.code === "not_authenticated") {
        showError({
          title: "This token was not accepted",
          detail: "It may have expired, or it was issued for another app. Get a fresh token and try again.",
        });
      } else {
        showError(error);
      }
    }
  }

  function tokenForm({ open }) {
    const field = h("textarea", {
      id: "token",
      name: "token",
      rows: "3",
      class: "input input--mono",
      autocomplete: "off",
      autocapitalize: "off",
      spellcheck: "false",
      "aria-describedby": "token-hint",
      required: true,
    });
    const submit = h("button", { type: "submit", class: ["button", open ? "button--primary" : "button--secondary"] }, "Sign in");
    const form = h(
      "form",
      { class: "form", novalidate: true },
      h("label", { for: "token", class: "label" }, "Bearer token"),
      field,
      h("p", { id: "token-hint", class: "hint" }, "The JWT the host app issues for a signed-in user. It stays in this tab only."),
      h("div", { class: "form-actions" }, submit),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      signInWithToken(field.value, submit);
    });
    if (open) {
      return form;
    }
    return h("details", { class: "disclosure" }, h("summary", {}, "Sign in with a bearer token instead"), form);
  }

  function userList() {
    const users = recentUsers();
    if (users.length === 0) {
      return null;
    }
    return h(
      "div",
      { class: "signin-section" },
      h("h2", { class: "section-title", id: "recent-users" }, "Continue as"),
      h(
        "ul",
        { class: "user-list", "aria-labelledby": "recent-users" },
        users.map((userId) => {
          const label = [avatar(userId), h("span", { class: "user-choice-name" }, userId), icon(ICONS.arrowRight, { size: 18, className: "icon user-choice-arrow" })];
          const choose = h("button", { type: "button", class: "user-choice", "data-user": userId }, ...label);
          choose.addEventListener("click", () => signInAs(userId, choose, label));
          const remove = h(
            "button",
            { type: "button", class: "icon-button user-remove", "aria-label": `Remove ${userId} from this list` },
            icon(ICONS.close, { size: 16 }),
          );
          remove.addEventListener("click", () => {
            if (busy) {
              return;
            }
            forgetUser(userId);
            renderBody();
            const first = main.querySelector(".user-choice") || main.querySelector("#new-user");
            if (first) {
              first.focus();
            }
          });
          return h("li", { class: "user-row" }, choose, remove);
        }),
      ),
    );
  }

  function newUserForm() {
    const input = h("input", {
      id: "new-user",
      name: "user_id",
      class: "input",
      type: "text",
      maxlength: "64",
      autocomplete: "off",
      autocapitalize: "off",
      spellcheck: "false",
      placeholder: "e.g. carol",
      "aria-describedby": "new-user-hint",
    });
    const error = h("p", { id: "new-user-error", class: "field-error", hidden: true });
    const submit = h("button", { type: "submit", class: "button button--primary" }, "Sign in");
    const form = h(
      "form",
      { class: "form signin-section", novalidate: true },
      h("label", { for: "new-user", class: "label" }, "Sign in as someone else"),
      h("div", { class: "input-row" }, input, submit),
      h("p", { id: "new-user-hint", class: "hint" }, "A new name creates a demo user. Use up to 64 letters, digits, dots, dashes, underscores or @."),
      error,
    );
    const validate = () => {
      const value = input.value.trim();
      const valid = USER_ID_PATTERN.test(value);
      error.hidden = valid;
      error.textContent = valid
        ? ""
        : value === ""
          ? "Enter a name."
          : "Use only letters, digits, dots, dashes, underscores or @ (no spaces), at most 64.";
      input.setAttribute("aria-invalid", valid ? "false" : "true");
      input.setAttribute("aria-describedby", valid ? "new-user-hint" : "new-user-error new-user-hint");
      return valid ? value : null;
    };
    input.addEventListener("input", () => {
      if (input.getAttribute("aria-invalid") === "true") {
        validate();
      }
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const userId = validate();
      if (userId === null) {
        input.focus();
        return;
      }
      signInAs(userId, submit, ["Sign in"]);
    });
    return form;
  }

  function renderBody() {
    clearBusy();
    if (devEnabled) {
      replaceChildren(
        body,
        h("p", { class: "lead" }, "This is a demo deployment: choose who you are. Users are created the first time they sign in."),
        userList(),
        newUserForm(),
        tokenForm({ open: false }),
      );
    } else {
      replaceChildren(
        body,
        messageBox({
          tone: "info",
          title: "Sign in through the host app",
          detail: "This deployment signs users in through the web app it belongs to, so there is no demo sign-in here. Paste a bearer token issued by that app to continue.",
        }),
        tokenForm({ open: true }),
      );
    }
  }

  renderBody();
  if (notice) {
    setMessage(status, messageBox(notice));
  }
}
