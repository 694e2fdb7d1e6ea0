// Pieces shared by the views: page headers, messages, spinners, focus keeping.

import { h, icon, ICONS } from "./dom.js";

export function pageHeader({ eyebrow, title, lead, aside }) {
  return h(
    "header",
    { class: "page-header" },
    h(
      "div",
      { class: "page-header-text" },
      eyebrow ? h("p", { class: "eyebrow" }, eyebrow) : null,
      h("h1", { id: "page-title", tabindex: "-1" }, title),
      lead ? h("p", { class: "lead" }, lead) : null,
    ),
    aside ? h("div", { class: "page-header-aside" }, aside) : null,
  );
}

export function spinner() {
  return h("span", { class: "spinner", "aria-hidden": "true" });
}

const TONE_ICONS = { success: ICONS.check, error: ICONS.alert, warning: ICONS.alert, info: ICONS.info };

/** A message box: `{tone, title, detail, requestId?}`; `onDismiss` adds a close button. */
export function messageBox({ tone, title, detail, requestId }, onDismiss) {
  return h(
    "div",
    { class: ["message", `message--${tone}`] },
    icon(TONE_ICONS[tone] || ICONS.info, { className: "message-icon" }),
    h(
      "div",
      { class: "message-body" },
      h("p", { class: "message-title" }, title),
      detail ? h("p", { class: "message-detail" }, detail) : null,
      requestId ? h("p", { class: "message-ref" }, `Reference: ${requestId}`) : null,
    ),
    onDismiss
      ? h(
          "button",
          { type: "button", class: "icon-button", "aria-label": "Dismiss message", on: { click: onDismiss } },
          icon(ICONS.close, { size: 16 }),
        )
      : null,
  );
}

/** Put a message in a live region (emptying it first, so the same text is announced again). */
export function setMessage(region, box) {
  region.replaceChildren();
  if (box) {
    // Next frame: some screen readers skip content inserted in the same task as the clearing.
    requestAnimationFrame(() => region.replaceChildren(box));
  }
}

/** Re-render inside `root` and give focus back to the control with the same data-focus-key. */
export function preserveFocus(root, render) {
  const active = document.activeElement;
  const inside = active && root.contains(active) && active.dataset;
  const keys = inside ? [active.dataset.focusKey, active.dataset.focusFallback].filter(Boolean) : [];
  render();
  if (keys.length > 0 && !root.contains(document.activeElement)) {
    for (const key of keys) {
      const again = root.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
      if (again) {
        again.focus({ preventScroll: true });
        break;
      }
    }
  }
}
