/**
 * sipgw.js: a small client for the sipgw API, for the browser. One ES module, no
 * dependencies, no build step. The web client served at `/` is built on it; use it on
 * your own pages the same way:
 *
 *     import { SipgwClient } from "https://gw.example.com/static/sipgw.js";
 *
 *     const sipgw = new SipgwClient({ baseUrl: "https://gw.example.com" });
 *     await sipgw.login({ username: "201", password });     // or new SipgwClient({ token })
 *     sipgw.on("call.offered", (event) => showPopup(event));
 *     sipgw.on("call.recognized", (event) => updatePopup(event));
 *     sipgw.on("state", ({ state }) => showConnection(state));
 *     sipgw.connect();                                       // live events, resumed after drops
 *     const request = await sipgw.dial("06 1234 5678");      // click-to-dial
 *     await sipgw.cancel(request.id);
 *     const { calls, next_cursor } = await sipgw.history({ missed: true, q: "Example" });
 *
 * Events are the JSON objects of docs/events.md. The subscription authenticates with a
 * single-use ticket (`POST /v1/events/ticket`), so the long-lived token never appears in
 * a URL. After a drop the client reconnects by itself (with backoff) and resumes after
 * the last event it delivered (`since`): every event arrives once, in stream order,
 * none is lost while the gateway's stream still holds it, none is delivered twice
 * (it also skips any `event_id` it has already delivered).
 *
 * Connection states, reported to `on("state", fn)` as `{state, attempt, retryIn, reason}`:
 *   "idle"          not connected (before connect(), after disconnect())
 *   "connecting"    opening the subscription (first time)
 *   "live"          subscribed; events flow
 *   "reconnecting"  the connection dropped; retrying in `retryIn` ms (attempt n)
 *   "unauthorized"  the token no longer stands (expired, revoked, logged out): log in again
 *
 * Other listeners: `on("*", fn)` every call event, `on("call.*", fn)` a type prefix,
 * `on("control", fn)` the gateway's own `sipgw.*` messages, `on("lost", fn)` when the
 * gateway no longer held the events since the last one (they are gone; reload what you
 * show, e.g. from history()).
 *
 * `clockSkew` is the gateway's clock minus this browser's, in ms, from the last answer's
 * `Date` header: count durations from `answered_at` against `Date.now() + clockSkew`.
 *
 * The token is kept in memory; keep it in sessionStorage yourself if a page reload should
 * not log the user out. Never put it in a cookie or a URL.
 */

const RECENT_IDS = 5000; // event_ids remembered to drop duplicates
const PING_EVERY_MS = 20000; // our keep-alive: a pong must come back within...
const PONG_WITHIN_MS = 10000; // ...this, else the connection is taken as dead
const BACKOFF_MS = [250, 1000, 2000, 4000, 8000, 15000];
const FINAL_CLOSE = { 4401: "token revoked", 4402: "token expired", 4403: "user removed" };
// The 401 detail of a refused second-factor code (docs/api.md "Second factor").
const CODE_REFUSED = "invalid code or challenge";

/** An HTTP error from the gateway: `status` and the gateway's `detail` message. */
export class SipgwError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(detail || `HTTP ${status}`);
    this.name = "SipgwError";
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

/** Compare two stream positions ("1714557601000-0"): <0, 0 or >0, like a - b. */
export function compareSeq(a, b) {
  const [am, an] = String(a).split("-").map(Number);
  const [bm, bn] = String(b).split("-").map(Number);
  return am !== bm ? am - bm : (an || 0) - (bn || 0);
}

export class SipgwClient {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] the gateway's origin ("" = this page's origin)
   * @param {string} [options.token] a bearer token from an earlier login
   * @param {string} [options.since] resume after this stream position on connect()
   */
  constructor({ baseUrl = "", token = null, since = null } = {}) {
    this.baseUrl = String(baseUrl).replace(/\/+$/, "");
    this.token = token;
    this.lastSeq = since;
    this.state = "idle";
    this.clockSkew = 0; // the gateway's clock minus ours, in ms (from the HTTP Date header)
    this._listeners = new Map();
    this._seen = new Set();
    this._seenOrder = [];
    this._ws = null;
    this._want = false;
    this._attempt = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._filters = {};
    this._onOnline = () => this._retryNow();
  }

  // -- listeners --------------------------------------------------------------------

  /** Call `fn` for each event of `type` (see the module's comment); returns `off()`. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  _emit(type, payload) {
    for (const fn of this._listeners.get(type) || []) {
      try {
        fn(payload);
      } catch (err) {
        // One broken listener must not stop the others, nor the subscription.
        console.error(`sipgw: a listener for ${type} failed`, err);
      }
    }
  }

  _deliver(event) {
    this._emit(event.type, event);
    const dot = event.type.indexOf(".");
    if (dot > 0) this._emit(`${event.type.slice(0, dot)}.*`, event);
    this._emit("*", event);
  }

  // -- HTTP -------------------------------------------------------------------------

  /**
   * A JSON request to the gateway; throws SipgwError with its `detail` on 4xx/5xx. A 401
   * ends the session (state "unauthorized"), except, with `codeStep`, the refusal of a
   * code: a wrong code leaves the token as good as it was.
   */
  async request(method, path, body, { codeStep = false } = {}) {
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit", // the token is the only credential; no cookie is ever sent
        cache: "no-store",
      });
    } catch (err) {
      throw new SipgwError(0, "The gateway cannot be reached");
    }
    const date = response.headers.get("Date");
    // The gateway's clock (to the second; +500 ms centres the truncation): event times are
    // the gateway's, durations and ages are counted against it.
    if (date) this.clockSkew = Date.parse(date) + 500 - Date.now();
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : response.statusText;
      const retry = response.headers.get("Retry-After");
      const wrongCode = codeStep && detail === CODE_REFUSED;
      if (response.status === 401 && this.token && !wrongCode) this._unauthorized(detail);
      throw new SipgwError(response.status, detail, retry === null ? null : Number(retry));
    }
    return data;
  }

  /**
   * Log in; keeps the token and answers the principal ({token, tenant, user, role, ...}).
   * A user with a second factor gets no token yet but {second_factor: "totp", challenge}:
   * pass the challenge and the app's code to verifySecondFactor(). ("enrol": the
   * tenant requires a second factor this user has not enrolled yet.)
   */
  async login({ username, password, tenant } = {}) {
    const body = { username, password };
    if (tenant) body.tenant = tenant;
    this.token = null;
    const answer = await this.request("POST", "/v1/auth/login", body);
    this.token = answer.token || null;
    return answer;
  }

  /**
   * The second step of a login: the code of the user's authenticator app, or one of
   * the recovery codes. The challenge works once, right or wrong: after a 401 the login
   * starts again from the password.
   */
  async verifySecondFactor({ challenge, code, recoveryCode } = {}) {
    const body = recoveryCode ? { challenge, recovery_code: recoveryCode } : { challenge, code };
    this.token = null;
    const answer = await this.request("POST", "/v1/auth/totp/verify", body);
    this.token = answer.token;
    return answer;
  }

  /** The caller's second factor: {policy, required, enrolled, pending, recovery_codes_left}. */
  secondFactor() {
    return this.request("GET", "/v1/auth/totp");
  }

  /**
   * Start an enrolment: {secret, otpauth_uri, qr_svg (a data: URI of an SVG), ...}, shown
   * once. With the token, or with the `challenge` of a login the gateway told to enrol
   * (second_factor "enrol"). Keep none of it beyond the enrolment step.
   */
  enrolSecondFactor({ challenge } = {}) {
    return this.request("POST", "/v1/auth/totp/enrol", challenge ? { challenge } : undefined);
  }

  /**
   * Confirm an enrolment with the app's first code: {recovery_codes} (ten, shown once).
   * With `challenge` the answer is the login's token as well, which the client keeps; the
   * challenge works once, right or wrong. With the token, a wrong code may be tried again.
   */
  async confirmSecondFactor({ code, challenge } = {}) {
    if (!challenge) return this.request("POST", "/v1/auth/totp/confirm", { code }, { codeStep: true });
    this.token = null;
    const answer = await this.request("POST", "/v1/auth/totp/confirm", { code, challenge });
    this.token = answer.token;
    return answer;
  }

  /** Ten new recovery codes for a current `code` (the old ones stop working): {recovery_codes}. */
  newRecoveryCodes({ code }) {
    return this.request("POST", "/v1/auth/totp/recovery-codes", { code }, { codeStep: true });
  }

  /** Turn off the user's own second factor, for a current `code` (refused, 403, when the
   * tenant's policy requires one). */
  turnOffSecondFactor({ code }) {
    return this.request("POST", "/v1/auth/totp/disable", { code }, { codeStep: true });
  }

  /** Revoke the token at the gateway and forget it. */
  async logout() {
    this.disconnect();
    try {
      if (this.token) await this.request("POST", "/v1/auth/logout");
    } finally {
      this.token = null;
    }
  }

  /** Who the token stands for: tenant, username, role, extensions, visible_extensions, settings. */
  me() {
    return this.request("GET", "/v1/me");
  }

  /**
   * Call history, newest first: {calls: [...], next_cursor}. Filters (all optional):
   * since, until (RFC 3339 or Date), extension, direction ("inbound" | "outbound" |
   * "internal"), missed (true/false), q (name, company or number), limit, cursor.
   */
  history(filters = {}) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) {
      if (value === undefined || value === null || value === "") continue;
      query.set(key, value instanceof Date ? value.toISOString() : String(value));
    }
    const qs = query.toString();
    return this.request("GET", `/v1/history${qs ? `?${qs}` : ""}`);
  }

  /**
   * Click-to-dial: ring my phone (or `from`'s), then connect it to `to` (a number as a
   * person types it). Answers the request ({id, state, conversation_id, ...}); follow it
   * with dialStatus(id) or the events carrying its `conversation_id`.
   */
  dial(to, { from, autoAnswer, requestId } = {}) {
    const body = { to };
    if (from) body.from = from;
    if (autoAnswer !== undefined) body.auto_answer = autoAnswer;
    if (requestId) body.request_id = requestId;
    return this.request("POST", "/v1/calls", body);
  }

  /** The click-to-dial request as it is now (state, cause once finished). */
  dialStatus(id) {
    return this.request("GET", `/v1/calls/${encodeURIComponent(id)}`);
  }

  /** Cancel a click-to-dial request at any stage until it is finished. */
  cancel(id) {
    return this.request("DELETE", `/v1/calls/${encodeURIComponent(id)}`);
  }

  // -- live events ------------------------------------------------------------------

  /**
   * Subscribe to live events (and keep subscribed until disconnect()). Options:
   * `since` (replay after this position; default: after the last event delivered, or
   * live only), `types` and `extensions` (arrays: only these).
   */
  connect({ since, types, extensions } = {}) {
    if (since !== undefined) this.lastSeq = since;
    this._filters = { types, extensions };
    this._want = true;
    this._attempt = 0;
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
  }

  /** Close the subscription and stop reconnecting. */
  disconnect() {
    this._want = false;
    globalThis.removeEventListener?.("online", this._onOnline);
    clearTimeout(this._retryTimer);
    this._closeSocket(1000, "bye");
    this._setState("idle");
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, ...extra });
  }

  async _ticket() {
    const answer = await this.request("POST", "/v1/events/ticket");
    return answer.ticket;
  }

  _socketUrl(ticket) {
    const base = this.baseUrl || globalThis.location.origin;
    const url = new URL("/v1/events", base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("ticket", ticket);
    if (this.lastSeq) url.searchParams.set("since", this.lastSeq);
    for (const type of this._filters.types || []) url.searchParams.append("type", type);
    for (const ext of this._filters.extensions || []) url.searchParams.append("extension", ext);
    return url.toString();
  }

  async _open() {
    if (!this._want) return;
    this._setState(this._attempt === 0 ? "connecting" : "reconnecting", { attempt: this._attempt });
    let ticket;
    try {
      ticket = await this._ticket();
    } catch (err) {
      if (err.status === 401 || err.status === 403) return this._unauthorized(err.detail);
      return this._scheduleRetry(err.detail || String(err));
    }
    if (!this._want) return;
    const ws = new WebSocket(this._socketUrl(ticket));
    this._ws = ws;
    ws.onmessage = (message) => this._onMessage(ws, message);
    ws.onclose = (close) => this._onClose(ws, close);
  }

  _onMessage(ws, message) {
    if (ws !== this._ws) return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    if (typeof data.type !== "string") return;
    if (data.type.startsWith("sipgw.")) return this._onControl(ws, data);
    if (data.seq && this.lastSeq && compareSeq(data.seq, this.lastSeq) <= 0) return;
    if (data.event_id) {
      if (this._seen.has(data.event_id)) return;
      this._remember(data.event_id);
    }
    if (data.seq) this._saveSeq(data.seq);
    this._deliver(data);
  }

  _onControl(ws, data) {
    switch (data.type) {
      case "sipgw.ready":
        this._attempt = 0;
        this._setState("live");
        this._startKeepAlive(ws);
        break;
      case "sipgw.heartbeat":
        // Idle: nothing is in flight, so the stream's position is safe to resume from.
        if (data.last_seq && (!this.lastSeq || compareSeq(data.last_seq, this.lastSeq) > 0)) {
          this._saveSeq(data.last_seq);
        }
        break;
      case "sipgw.pong":
        clearTimeout(this._pongTimer);
        break;
      case "sipgw.lost":
        // The events after our position are gone from the stream: go on live.
        this.lastSeq = null;
        this._emit("lost", data);
        break;
      default:
        break;
    }
    this._emit("control", data);
  }

  _saveSeq(seq) {
    this.lastSeq = seq;
    this._emit("seq", seq);
  }

  _remember(id) {
    this._seen.add(id);
    this._seenOrder.push(id);
    if (this._seenOrder.length > RECENT_IDS) this._seen.delete(this._seenOrder.shift());
  }

  _startKeepAlive(ws) {
    clearInterval(this._pingTimer);
    // A connection can die without a close (a laptop's Wi-Fi, a NAT dropping it): ask
    // for a pong now and then and reconnect when none comes back.
    this._pingTimer = setInterval(() => {
      if (ws !== this._ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(JSON.stringify({ type: "ping" }));
      clearTimeout(this._pongTimer);
      this._pongTimer = setTimeout(() => {
        if (ws === this._ws) this._closeSocket(4000, "no pong");
      }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  _closeSocket(code, reason) {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    ws.onmessage = null;
    ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      ws.close();
    }
    if (code !== 1000 && this._want) this._scheduleRetry(reason);
  }

  _onClose(ws, close) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    if (FINAL_CLOSE[close.code]) return this._unauthorized(close.reason || FINAL_CLOSE[close.code]);
    if (this._want) this._scheduleRetry(close.reason || `closed (${close.code})`);
  }

  _scheduleRetry(reason) {
    if (!this._want) return;
    clearTimeout(this._retryTimer);
    const base = BACKOFF_MS[Math.min(this._attempt, BACKOFF_MS.length - 1)];
    const retryIn = Math.round(base * (0.8 + Math.random() * 0.4));
    this._attempt += 1;
    this._setState("reconnecting", { attempt: this._attempt, retryIn, reason });
    this._retryTimer = setTimeout(() => this._open(), retryIn);
  }

  _retryNow() {
    if (this._want && this.state === "reconnecting") {
      clearTimeout(this._retryTimer);
      this._open();
    }
  }

  _unauthorized(reason) {
    const was = this.state;
    this._want = false;
    clearTimeout(this._retryTimer);
    if (this._ws) this._closeSocket(1000, "unauthorized");
    if (was !== "unauthorized") this._setState("unauthorized", { reason });
  }
}
