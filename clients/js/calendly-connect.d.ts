// Type declarations for calendly-connect.js (the calendly-connect service's browser client).
// Objects from the service keep its snake_case field names; date-times are RFC 3339 strings.

// ------------------------------------------------------------------ service JSON

/** `status` of a connection; other values may be added by the service. */
export type ConnectionStatus = "active" | "needs_reauth" | "disconnected" | (string & {});

/** `webhook_status` of a connection; other values may be added by the service. */
export type WebhookStatus = "active" | "unavailable_plan" | "disabled" | "missing" | (string & {});

/** Set when the service's background worker keeps failing on this connection. */
export interface Maintenance {
  failures: number;
  last_error: string | null;
  retry_at: string | null;
}

/** The user's Calendly connection as the service shows it (never any token). */
export interface Connection {
  status: ConnectionStatus;
  webhook_status: WebhookStatus;
  calendly_user_uri: string | null;
  organization_uri: string | null;
  email: string | null;
  name: string | null;
  token_expires_at: string | null;
  last_error: string | null;
  connected_since: string;
  updated_at: string;
  maintenance?: Maintenance | null;
  /** When the service last synced this connection with Calendly (null: not yet). A free-plan
   * connection (`webhook_status: "unavailable_plan"`) is only as fresh as this. */
  synced_at?: string | null;
}

export type MeetingStatus = "active" | "canceled";

export interface Cancellation {
  canceled_by: string | null;
  reason: string | null;
  canceler_type: string | null;
  canceled_at: string | null;
}

export interface Invitee {
  invitee_uri: string;
  email: string | null;
  name: string | null;
  status: MeetingStatus;
  rescheduled: boolean;
  old_invitee_uri: string | null;
  new_invitee_uri: string | null;
  no_show: boolean;
  cancellation: Cancellation | null;
}

export interface Meeting {
  id: string;
  event_uri: string;
  name: string | null;
  start_time: string | null;
  end_time: string | null;
  status: MeetingStatus;
  /** Calendly's location object as it came (type, join_url, ...). */
  location: Record<string, unknown> | null;
  cancellation: Cancellation | null;
  invitees: Invitee[];
  /**
   * "pending" while the service reads the event from Calendly (a delivery in Calendly's older
   * shape named only the event: its name, times, location and status follow within seconds);
   * "unavailable" when Calendly would not show the event (`details_error` says what it answered).
   */
  details: "complete" | "pending" | "unavailable";
  details_error: string | null;
}

/** One page of `meetings()`. */
export interface MeetingsPage {
  meetings: Meeting[];
  /** The cursor of the next page; null on the last page. */
  nextCursor: string | null;
}

/** What `DELETE /api/calendly/connection` answers. */
export interface DisconnectResult {
  connection: Connection | null;
  subscription_deleted: boolean;
  revoke_failed: boolean;
  already_disconnected: boolean;
}

/** RFC 9457 problem details as the service sends them. */
export interface ProblemDetails {
  /** "urn:calendly-connect:problem:<slug>" */
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  request_id?: string | null;
  errors?: Array<{ parameter: string | null; source: string | null; message: string }> | null;
  [key: string]: unknown;
}

// ----------------------------------------------------------------------- client

export interface TokenContext {
  /** true after a 401 or an `expired` live event: answer a NEW token, or null. */
  refresh: boolean;
}

export interface CalendlyConnectOptions {
  /** The service's base URL; may include a path prefix; a trailing slash is tolerated. */
  url: string;
  /** The host's bearer token for the signed-in user, or null when signed out. */
  getToken: (context: TokenContext) => string | null | Promise<string | null>;
  /**
   * Defaults to globalThis.fetch (bound). Every request is sent with the bearer token and
   * `credentials: "same-origin"`: cookies go to the service only from a page on its own origin.
   */
  fetch?: typeof fetch;
  /** For the popup and its message events; defaults to globalThis.window. */
  window?: Window;
  /** Defaults: name "calendly-connect", 560 × 760. */
  popup?: { name?: string; width?: number; height?: number };
}

export interface RequestOptions {
  signal?: AbortSignal;
}

export interface ConnectResult {
  /** "connected" from connect(), "reconnected" from reconnect(). */
  outcome: "connected" | "reconnected";
  connection: Connection;
  /** The user connected a different Calendly account than before. */
  switchedAccount: boolean;
}

export interface MeetingFilters extends RequestOptions {
  status?: MeetingStatus;
  /** Only meetings starting at or after this instant (a string needs a UTC offset). */
  startsAfter?: Date | string;
  /** Only meetings starting before this instant (a string needs a UTC offset). */
  startsBefore?: Date | string;
  /** Page size, 1..200 (service default 50). */
  limit?: number;
}

/**
 * "connecting": first try, or straight back with a fresh token; "open": the server said `ready`;
 * "retrying": after a failure (backing off, then trying again); "closed": closed, or given up.
 */
export type LiveState = "connecting" | "open" | "retrying" | "closed";

export interface LiveHandlers {
  /** Each meeting created or changed (also cancellations). */
  onMeeting?(meeting: Meeting): void;
  /** The connection on each (re)start of the stream and whenever it changes; null: never connected. */
  onConnection?(connection: Connection | null): void;
  /** Each change of `state` (the initial "connecting" is not reported). */
  onStateChange?(state: LiveState): void;
  /**
   * Each failure. While `state` is "retrying" the stream recovers by itself; when it is
   * "closed" it gave up (e.g. NotAuthenticatedError).
   */
  onError?(error: CalendlyConnectError): void;
}

export interface LiveSubscription {
  /** Stops the stream; no handler is called afterwards. */
  close(): void;
  readonly state: LiveState;
}

export interface CalendlyConnect {
  /** The normalized base URL (no trailing slash). */
  readonly url: string;
  /** The connection, or null when the user never connected. */
  status(options?: RequestOptions): Promise<Connection | null>;
  /** Connect Calendly in a popup. Call synchronously from a click handler. */
  connect(options?: RequestOptions): Promise<ConnectResult>;
  /**
   * Mend the connection with the stored grant; opens a popup only when the service says
   * `authorization_required` (a blocked popup rejects with PopupBlockedError: `continue()`).
   */
  reconnect(options?: RequestOptions): Promise<ConnectResult>;
  disconnect(options?: RequestOptions): Promise<DisconnectResult>;
  /** The meetings by start time, page by page (follows `next_cursor`). */
  meetings(filters?: MeetingFilters): AsyncIterableIterator<MeetingsPage>;
  /** Live changes over Server-Sent Events, resumed after drops and token expiry. */
  live(handlers: LiveHandlers): LiveSubscription;
}

/** Creates a client for one calendly-connect service. */
export function createCalendlyConnect(options: CalendlyConnectOptions): CalendlyConnect;

// ----------------------------------------------------------------------- errors

export type CalendlyConnectErrorCode =
  | "popup_blocked"
  | "popup_closed"
  | "denied"
  | "account_in_use"
  | "expired"
  | "not_authenticated"
  | "network"
  | "service";

export interface CalendlyConnectErrorOptions {
  status?: number;
  problem?: ProblemDetails | null;
  requestId?: string | null;
  title?: string;
  detail?: string | null;
  cause?: unknown;
}

/** Base class of every error the client rejects with. */
export class CalendlyConnectError extends Error {
  constructor(message?: string, options?: CalendlyConnectErrorOptions);
  readonly code: CalendlyConnectErrorCode;
  /** The HTTP status; 0 when there was no HTTP answer. */
  readonly status: number;
  /** The service's problem details, or null. */
  readonly problem: ProblemDetails | null;
  /** The id to quote when reporting a service failure. */
  readonly requestId: string | null;
  /** Short, for people. */
  readonly title: string;
  /** A sentence saying what to do, for people. */
  readonly detail: string | null;
}

/** The browser blocked the popup. */
export class PopupBlockedError extends CalendlyConnectError {
  constructor(
    message?: string,
    options?: CalendlyConnectErrorOptions & {
      resume?: (options?: RequestOptions) => Promise<ConnectResult>;
    },
  );
  readonly code: "popup_blocked";
  /** From a NEW click handler: opens the popup for the same authorization and carries on. */
  continue(options?: RequestOptions): Promise<ConnectResult>;
}

/** The user closed the popup before connecting finished. */
export class PopupClosedError extends CalendlyConnectError {
  readonly code: "popup_closed";
}

/** The user did not grant access at Calendly. */
export class AuthorizationDeniedError extends CalendlyConnectError {
  readonly code: "denied";
}

/** That Calendly account is already connected to another user. */
export class AccountInUseError extends CalendlyConnectError {
  readonly code: "account_in_use";
}

/** The authorization request expired, or the service refused its state. */
export class AuthorizationExpiredError extends CalendlyConnectError {
  readonly code: "expired";
}

/** No token, or the token was refused even after a refreshed one. */
export class NotAuthenticatedError extends CalendlyConnectError {
  readonly code: "not_authenticated";
}

/** The service could not be reached. */
export class NetworkError extends CalendlyConnectError {
  readonly code: "network";
}

/** Any other failure. */
export class ServiceError extends CalendlyConnectError {
  readonly code: "service";
}

// ---------------------------------------------------------- Server-Sent Events

export interface SseEvent {
  /** The `event` field, "message" when absent. */
  type: string;
  data: string;
  /** The last `id` seen on the stream so far; null if none yet. */
  lastEventId: string | null;
}

export interface SseParserHandlers {
  onEvent(event: SseEvent): void;
  onComment?(text: string): void;
  onRetry?(milliseconds: number): void;
}

/** A text/event-stream parser (WHATWG): feed decoded text with push(), then end(). */
export class SseParser {
  constructor(handlers: SseParserHandlers);
  /** The last event id seen (persists across events); null: none yet. */
  lastEventId: string | null;
  push(chunk: string): void;
  end(): void;
}
