// Hands the OAuth outcome to the app window that opened this popup, then closes it.
// The page embeds the outcome and the allowed origins as JSON; nothing here is inline,
// so the page's Content-Security-Policy can forbid inline script entirely.
"use strict";

(function () {
  function readJson(id) {
    var element = document.getElementById(id);
    if (!element) {
      return null;
    }
    try {
      return JSON.parse(element.textContent || "null");
    } catch (error) {
      return null;
    }
  }

  function showBackLink() {
    var back = document.getElementById("back");
    if (back) {
      back.hidden = false;
    }
  }

  var outcome = readJson("outcome");
  var settings = readJson("popup-settings") || {};
  var origins = Array.isArray(settings.target_origins) ? settings.target_origins : [];
  var opener = window.opener;

  if (!outcome || !opener || opener.closed || origins.length === 0) {
    showBackLink();
    return;
  }
  // The browser delivers the message only if the opener's origin is the target origin,
  // so the outcome never reaches a page that is not one of the configured apps.
  origins.forEach(function (origin) {
    try {
      opener.postMessage(outcome, origin);
    } catch (error) {
      // A malformed origin: skip it, the others may still match.
    }
  });
  window.close();
  // Still here: the browser refused to close a window it thinks the user opened.
  showBackLink();
})();
