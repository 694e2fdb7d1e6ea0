import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { SseParser } from "../calendly-connect.js";

function collect() {
  const events = [];
  const comments = [];
  const retries = [];
  const parser = new SseParser({
    onEvent: (event) => events.push(event),
    onComment: (text) => comments.push(text),
    onRetry: (ms) => retries.push(ms),
  });
  return { parser, events, comments, retries };
}

function parse(chunks, { end = true } = {}) {
  const result = collect();
  for (const chunk of chunks) {
    result.parser.push(chunk);
  }
  if (end) {
    result.parser.end();
  }
  return result;
}

const STREAM =
  "\uFEFFretry: 2500\n" +
  ": ping\r\n" +
  "id: 7\r" +
  "event: meetings\r\n" +
  "data: {\"a\":1}\n" +
  "data:second line\r" +
  "\r\n" +
  "event: connection\n" +
  "unknown: field\n" +
  "data\n" +
  "\n" +
  "id: 8\r\n" +
  "data: third\r\n" +
  "\r";

const EXPECTED = [
  { type: "meetings", data: "{\"a\":1}\nsecond line", lastEventId: "7" },
  { type: "connection", data: "", lastEventId: "7" },
  { type: "message", data: "third", lastEventId: "8" },
];

describe("SseParser", () => {
  test("the whole stream at once: LF, CR and CRLF line ends, BOM, comments, retry, ids", () => {
    const { events, comments, retries } = parse([STREAM]);
    assert.deepEqual(events, EXPECTED);
    assert.deepEqual(comments, ["ping"]);
    assert.deepEqual(retries, [2500]);
  });

  test("the same stream one character at a time (every line end split across chunks)", () => {
    const { events, comments, retries } = parse([...STREAM]);
    assert.deepEqual(events, EXPECTED);
    assert.deepEqual(comments, ["ping"]);
    assert.deepEqual(retries, [2500]);
  });

  test("the same stream at every two-chunk split", () => {
    for (let i = 0; i <= STREAM.length; i += 1) {
      const { events } = parse([STREAM.slice(0, i), STREAM.slice(i)]);
      assert.deepEqual(events, EXPECTED, `split at ${i}`);
    }
  });

  test("a CRLF split between chunks is one line end, not two", () => {
    // Read as two line ends, the empty line would dispatch "a" and "b" as two events.
    const { events } = parse(["data: a\r", "\ndata: b\r", "\n\r", "\n"]);
    assert.deepEqual(events, [{ type: "message", data: "a\nb", lastEventId: null }]);
  });

  test("CR-only line ends", () => {
    const { events } = parse(["event: x\rdata: 1\r\rdata: 2\r\r"]);
    assert.deepEqual(
      events.map((e) => [e.type, e.data]),
      [
        ["x", "1"],
        ["message", "2"],
      ],
    );
  });

  test("a trailing CR waits for the next chunk, and end() takes it as a line end", () => {
    const { parser, events } = collect();
    parser.push("data: 1\n\r");
    assert.equal(events.length, 0, "the CR may be the first half of a CRLF");
    parser.push("data: 2\n\r");
    assert.deepEqual(
      events.map((e) => e.data),
      ["1"],
      "followed by 'd', the CR ended the empty line",
    );
    parser.end();
    assert.deepEqual(
      events.map((e) => e.data),
      ["1", "2"],
    );
  });

  test("an unfinished event is discarded at the end", () => {
    const { events } = parse(["data: done\n\ndata: never dispatched\n"]);
    assert.deepEqual(
      events.map((e) => e.data),
      ["done"],
    );
  });

  test("no event without data; an id with NUL is ignored; a bad retry is ignored", () => {
    const { events, retries } = parse(["event: empty\n\nid: 1\n\nid: a\u0000b\nretry: 10x\ndata: z\n\n"]);
    assert.deepEqual(events, [{ type: "message", data: "z", lastEventId: "1" }]);
    assert.deepEqual(retries, []);
  });

  test("only the first space after the colon is removed", () => {
    const { events } = parse(["data:  two spaces\n\n"]);
    assert.equal(events[0].data, " two spaces");
  });
});
