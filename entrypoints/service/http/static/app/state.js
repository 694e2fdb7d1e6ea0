// What the page knows: the user's Calendly connection and meetings, shared by the views.

import { calendly, isAbort } from "./api.js";
import { parseDate } from "./format.js";

const DAY = 24 * 3600 * 1000;
const UPCOMING_PAGE = 50;
const PAST_PAGE = 200;
// Past meetings are read newest first, one time window at a time (the API pages oldest first).
const FIRST_PAST_WINDOW = 30 * DAY;
const MAX_PAGES_PER_WINDOW = 25;

class Emitter {
  constructor() {
    this.listeners = new Set();
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(detail) {
    for (const listener of [...this.listeners]) {
      listener(detail);
    }
  }
}

/**
 * The user's Calendly connection: `value` is the connection, or null when never connected.
 * It comes from the live stream (its first event says it) or the client's status().
 */
export class ConnectionModel extends Emitter {
  constructor() {
    super();
    this.reset();
  }

  reset() {
    this.loaded = false;
    this.loading = false;
    // The live stream is about to say it: no request meanwhile (for a user who never
    // connected, GET /api/calendly/connection answers 404, which browsers log as an error).
    this.awaiting = false;
    this.value = null;
    this.error = null;
    this.generation = (this.generation || 0) + 1;
  }

  get connected() {
    return Boolean(this.value && this.value.status !== "disconnected");
  }

  set(value) {
    this.value = value && typeof value === "object" ? value : null;
    this.loaded = true;
    this.awaiting = false;
    this.error = null;
    this.emit({});
  }

  /** The live stream will tell: views wait for it instead of asking. */
  expect() {
    if (!this.loaded) {
      this.awaiting = true;
    }
  }

  /** Ask for it, unless it is known, being asked for, or on its way on the live stream. */
  ensure() {
    if (!this.loaded && !this.loading && !this.awaiting) {
      this.load().catch(() => {});
    }
  }

  /** Fetch it; answers the connection (or null). Errors are kept in `error` unless `quiet`. */
  async load({ quiet = false } = {}) {
    const generation = this.generation;
    this.loading = true;
    this.awaiting = false;
    if (!quiet) {
      this.emit({});
    }
    try {
      const value = await calendly.status(); // null: never connected
      if (generation === this.generation) {
        this.loading = false;
        this.set(value);
      }
      return value;
    } catch (error) {
      if (generation !== this.generation) {
        return null;
      }
      this.loading = false;
      if (!quiet) {
        this.error = error;
        this.emit({});
      }
      throw error;
    }
  }
}

function startOf(meeting) {
  const date = parseDate(meeting.start_time);
  return date ? date.getTime() : null;
}

function isMeeting(value) {
  return Boolean(value && typeof value === "object" && typeof value.id === "string" && value.id);
}

/** The first page of the client's meetings(filters): `{meetings, more}`. */
async function firstPage(filters) {
  const pages = calendly.meetings(filters);
  try {
    const { value } = await pages.next();
    return { meetings: value ? value.meetings : [], more: Boolean(value && value.nextCursor) };
  } finally {
    pages.return().catch(() => {});
  }
}

/** Ends a meetings() iteration that is not read to its end. */
function close(pages) {
  if (pages) {
    pages.return().catch(() => {});
  }
}

/**
 * The meetings loaded so far, by id. Upcoming ones page forward from `anchor` (the client's
 * meetings() iteration, one page per "Load more"); past ones are read in windows going back
 * in time, so the newest come first.
 */
export class MeetingsModel extends Emitter {
  constructor() {
    super();
    this.reset();
  }

  reset() {
    close(this.upcoming && this.upcoming.pages);
    this.byId = new Map();
    this.fresh = new Map();
    this.status = "idle"; // idle | loading | ready | error
    this.error = null;
    this.anchor = null;
    // `pages`: the upcoming iteration, `read` pages into it; `more`: a next page exists.
    this.upcoming = { pages: null, read: 0, more: false, loading: false, error: null };
    this.past = { from: null, earliest: null, hasEarlier: false, loading: false, error: null };
    this.pendingResync = false;
    this.generation = (this.generation || 0) + 1;
  }

  get meetings() {
    return [...this.byId.values()];
  }

  /** Insert or replace meetings by id; `fresh` ones are highlighted for a moment. */
  upsert(meetings, { fresh = false } = {}) {
    const changed = [];
    const added = new Set();
    for (const meeting of Array.isArray(meetings) ? meetings : []) {
      if (!isMeeting(meeting)) {
        continue;
      }
      if (!this.byId.has(meeting.id)) {
        added.add(meeting.id);
      }
      this.byId.set(meeting.id, meeting);
      changed.push(meeting);
      if (fresh) {
        this.fresh.set(meeting.id, Date.now());
      }
    }
    if (changed.length > 0) {
      this.emit({ changed, added, fresh });
    }
    return changed;
  }

  isFresh(id, withinMs = 6000) {
    const at = this.fresh.get(id);
    if (at === undefined) {
      return false;
    }
    if (Date.now() - at > withinMs) {
      this.fresh.delete(id);
      return false;
    }
    return true;
  }

  /** The upcoming meetings from `anchor`, page by page. */
  upcomingPages(anchor) {
    return calendly.meetings({ startsAfter: anchor, limit: UPCOMING_PAGE });
  }

  async load() {
    const generation = this.generation;
    this.status = "loading";
    this.error = null;
    this.emit({});
    let pages = null;
    try {
      const anchor = new Date();
      const from = new Date(anchor.getTime() - FIRST_PAST_WINDOW);
      pages = this.upcomingPages(anchor);
      const [first] = await Promise.all([
        pages.next(),
        this.readPastWindow(from, anchor, generation),
      ]);
      if (generation !== this.generation) {
        close(pages);
        return;
      }
      this.anchor = anchor;
      this.upsert(first.value ? first.value.meetings : []);
      const more = Boolean(first.value && first.value.nextCursor);
      close(this.upcoming.pages);
      this.upcoming.pages = more ? pages : null;
      this.upcoming.read = 1;
      this.upcoming.more = more;
      if (!more) {
        close(pages);
      }
      this.past.from = from;
      await this.probeEarlier(generation);
      this.status = "ready";
      this.emit({});
      if (this.pendingResync) {
        this.pendingResync = false;
        await this.resync();
      }
    } catch (error) {
      close(pages);
      if (generation !== this.generation || isAbort(error)) {
        return;
      }
      this.status = "error";
      this.error = error;
      this.emit({});
    }
  }

  /** Read the loaded ranges again (after a gap in live updates) without dropping anything. */
  async resync() {
    if (this.status !== "ready" || !this.anchor) {
      if (this.status === "loading") {
        this.pendingResync = true;
      }
      return;
    }
    const generation = this.generation;
    try {
      const upcoming = await firstPage({ startsAfter: this.anchor, limit: UPCOMING_PAGE });
      if (generation !== this.generation) {
        return;
      }
      this.upsert(upcoming.meetings, { fresh: false });
      await this.readPastWindow(this.past.from, this.anchor, generation);
    } catch {
      // Live updates keep coming; the next resync or reload catches up.
    }
  }

  /** Every meeting in [from, to) (at most MAX_PAGES_PER_WINDOW pages); answers how many. */
  async readPastWindow(from, to, generation) {
    let count = 0;
    let read = 0;
    // Leaving the loop early (return, break, an error) ends the client's iteration.
    for await (const page of calendly.meetings({ startsAfter: from, startsBefore: to, limit: PAST_PAGE })) {
      if (generation !== this.generation) {
        return 0;
      }
      this.upsert(page.meetings);
      count += page.meetings.length;
      read += 1;
      if (read >= MAX_PAGES_PER_WINDOW) {
        break;
      }
    }
    return count;
  }

  /** Is anything older than the loaded past window? Remembers the oldest start if so. */
  async probeEarlier(generation) {
    const { meetings } = await firstPage({ startsBefore: this.past.from, limit: 1 });
    if (generation !== this.generation) {
      return;
    }
    const oldest = meetings.length > 0 ? startOf(meetings[0]) : null;
    this.past.earliest = oldest;
    this.past.hasEarlier = oldest !== null;
  }

  async loadMoreUpcoming() {
    const upcoming = this.upcoming;
    if (!upcoming.more || upcoming.loading) {
      return;
    }
    const generation = this.generation;
    upcoming.loading = true;
    upcoming.error = null;
    this.emit({});
    try {
      if (!upcoming.pages) {
        // A failed page ended the iteration: read again from the start up to where it was.
        upcoming.pages = this.upcomingPages(this.anchor);
        for (let page = 0; page < upcoming.read; page += 1) {
          const { value, done } = await upcoming.pages.next();
          if (generation !== this.generation) {
            return;
          }
          if (done) {
            upcoming.pages = null;
            upcoming.more = false;
            return;
          }
          this.upsert(value.meetings);
        }
      }
      const { value, done } = await upcoming.pages.next();
      if (generation !== this.generation) {
        return;
      }
      upcoming.read += done ? 0 : 1;
      upcoming.more = Boolean(!done && value.nextCursor);
      if (!upcoming.more) {
        close(upcoming.pages);
        upcoming.pages = null;
      }
      if (!done) {
        this.upsert(value.meetings);
      }
    } catch (error) {
      if (generation === this.generation) {
        upcoming.pages = null; // the iteration ended with its error
        upcoming.error = error;
      }
    } finally {
      if (generation === this.generation) {
        this.upcoming.loading = false;
        this.emit({});
      }
    }
  }

  /** Load older past meetings: windows twice as long each time, until some are found. */
  async loadEarlier() {
    if (!this.past.hasEarlier || this.past.loading) {
      return;
    }
    const generation = this.generation;
    this.past.loading = true;
    this.past.error = null;
    this.emit({});
    try {
      let span = Math.max(FIRST_PAST_WINDOW, this.anchor.getTime() - this.past.from.getTime());
      for (;;) {
        const to = this.past.from;
        const from = new Date(Math.max(this.past.earliest, to.getTime() - span));
        const found = await this.readPastWindow(from, to, generation);
        if (generation !== this.generation) {
          return;
        }
        this.past.from = from;
        if (from.getTime() <= this.past.earliest) {
          this.past.hasEarlier = false;
          break;
        }
        if (found > 0) {
          await this.probeEarlier(generation);
          break;
        }
        span *= 2;
      }
    } catch (error) {
      if (generation === this.generation) {
        this.past.error = error;
      }
    } finally {
      if (generation === this.generation) {
        this.past.loading = false;
        this.emit({});
      }
    }
  }
}

export const connection = new ConnectionModel();
export const meetings = new MeetingsModel();
