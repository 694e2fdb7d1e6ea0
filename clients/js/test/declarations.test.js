// The module, its TypeScript declarations and package.json agree.
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { test } from "node:test";

import * as client from "../calendly-connect.js";

const root = new URL("../", import.meta.url);
const declarations = readFileSync(new URL("calendly-connect.d.ts", root), "utf8");
const pkg = JSON.parse(readFileSync(new URL("package.json", root), "utf8"));

/** Names the .d.ts declares as values (functions, classes, consts): those exist at run time. */
function declaredValues(text) {
  const names = new Set();
  const pattern = /^export\s+(?:declare\s+)?(?:abstract\s+)?(?:function|class|const|let|var|enum)\s+([A-Za-z_$][\w$]*)/gm;
  for (const match of text.matchAll(pattern)) {
    names.add(match[1]);
  }
  return names;
}

/** Names the .d.ts declares as types only. */
function declaredTypes(text) {
  const names = new Set();
  for (const match of text.matchAll(/^export\s+(?:declare\s+)?(?:interface|type)\s+([A-Za-z_$][\w$]*)/gm)) {
    names.add(match[1]);
  }
  return names;
}

test("every export of the module is declared in the .d.ts, and every declared value exists", () => {
  const exported = new Set(Object.keys(client));
  const declared = declaredValues(declarations);
  assert.deepEqual([...exported].sort(), [...declared].sort());
  assert.equal(typeof client.createCalendlyConnect, "function");
  for (const name of declared) {
    if (name !== "createCalendlyConnect") {
      assert.equal(typeof client[name], "function", `${name} is a class`);
    }
  }
});

test("the .d.ts declares the types the API names", () => {
  const types = declaredTypes(declarations);
  for (const name of [
    "Connection",
    "Meeting",
    "Invitee",
    "MeetingsPage",
    "DisconnectResult",
    "ConnectResult",
    "LiveState",
    "LiveSubscription",
    "CalendlyConnect",
    "CalendlyConnectOptions",
  ]) {
    assert.ok(types.has(name), `${name} is declared`);
  }
  // Nothing re-exported from elsewhere, nothing exported twice.
  assert.doesNotMatch(declarations, /^export\s*\{|^export\s+\*/m);
  const all = [...declaredValues(declarations), ...types];
  assert.equal(new Set(all).size, all.length);
});

test("every error class carries its code and extends CalendlyConnectError", () => {
  const codes = {
    PopupBlockedError: "popup_blocked",
    PopupClosedError: "popup_closed",
    AuthorizationDeniedError: "denied",
    AccountInUseError: "account_in_use",
    AuthorizationExpiredError: "expired",
    NotAuthenticatedError: "not_authenticated",
    NetworkError: "network",
    ServiceError: "service",
  };
  for (const [name, code] of Object.entries(codes)) {
    const error = new client[name]("x");
    assert.ok(error instanceof client.CalendlyConnectError && error instanceof Error, name);
    assert.equal(error.code, code);
    assert.equal(error.name, name);
    assert.equal(error.status, 0);
    assert.equal(error.problem, null);
    assert.equal(error.requestId, null);
    const block = declarations.split(/^export /m).find((part) => part.startsWith(`class ${name} `));
    assert.ok(block && block.startsWith(`class ${name} extends CalendlyConnectError`), name);
    assert.ok(block.includes(`readonly code: "${code}";`), `${name}'s declared code`);
  }
});

test("package.json: entry points exist, no dependencies, publishable", () => {
  assert.equal(pkg.name, "calendly-connect-client");
  assert.equal(pkg.version, "0.1.0");
  assert.equal(pkg.type, "module");
  assert.equal(pkg.license, "MIT");
  assert.equal(pkg.private, undefined);
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.scripts.test, "node --test test/");
  assert.deepEqual(pkg.files.sort(), ["README.md", "calendly-connect.d.ts", "calendly-connect.js"]);
  for (const file of [pkg.main, pkg.types, pkg.exports["."].default, pkg.exports["."].types, ...pkg.files]) {
    assert.ok(existsSync(new URL(file, root)), `${file} exists`);
  }
});
