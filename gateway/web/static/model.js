/**
 * The web client's picture of the calls, built from call events only (no DOM here):
 * live calls, who is ringing or busy, what each caller is called. app.js renders it.
 */

export const ACTIVE = new Set(["offered", "delivered", "established", "held"]);
const RINGING = new Set(["offered", "delivered"]);
const KEEP_ENDED_MS = 60000; // an ended call stays on screen this long
const STAGE_OF = {
  "call.originated": "Dial request accepted",
  "call.offered": "Offered",
  "call.delivered": "Ringing",
  "call.established": "Answered",
  "call.held": "On hold",
  "call.retrieved": "Resumed",
  "call.transferred": "Transferred",
  "call.diverted": "Diverted",
  "call.recognized": "Caller recognized",
  "call.failed": "Failed",
  "call.cleared": "Ended",
};

/** Fields an event may bring or update; an absent field means "unchanged / unknown". */
const CARRIED = [
  "conversation_id", "parent_call_id", "direction", "state", "calling", "called",
  "extension", "device", "created_at", "answered_at", "ended_at", "duration_ms", "cause",
  "missed", "transfer", "diversion", "originate", "lookup", "screen_pop",
];

let extensionNames = {};

/** The tenant's people by extension (/v1/me `extension_names`): names for internal calls. */
export function setExtensionNames(names) {
  extensionNames = names || {};
}

/** The remote party of a call, as the user sees it: {name, company, number, known}. */
export function remoteParty(call) {
  const party = call.direction === "outbound" ? call.called : call.calling;
  const contact = (call.lookup && call.lookup.contact) || {};
  const number = (party && (party.number_e164 || party.number_raw)) || "";
  // A display name that only repeats the number names nobody.
  let display = (party && party.display) || "";
  if (display && party && [party.number_raw, party.number_e164].includes(display)) display = "";
  // A colleague's name is known for the extensions this user may see; else say what it is.
  const colleague = call.direction === "internal" && party && party.number_raw
    ? extensionNames[party.number_raw] || `Extension ${party.number_raw}`
    : "";
  return {
    name: contact.name || display || colleague || "",
    company: contact.company || "",
    number: number || "anonymous",
    known: Boolean(contact.name || contact.company),
    contact,
  };
}

/** The number to call back: the remote party's, as signalled or in E.164. */
export function callbackNumber(call) {
  const party = call.direction === "outbound" ? call.called : call.calling;
  return (party && (party.number_e164 || party.number_raw)) || "";
}

/** The recognition status of a call: "hit", "miss", "pending", ... or "" (none). */
export function lookupStatus(call) {
  return (call.lookup && call.lookup.status) || "";
}

/** Only http and https URLs are ever opened or linked; anything else is dropped. */
export function safeUrl(url) {
  try {
    const parsed = new URL(String(url));
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/**
 * The screen pops of a call split into the CRM record ("open") and the new-contact form
 * ("create"). Which is which comes from the tenant's templates (`when`, from /v1/me)
 * when known, else from the look-up: a hit opens a record, a miss creates one.
 */
export function screenPops(call, templates = {}) {
  // /v1/me gives the templates as {name: {when, url}}; a list of {name, when} works too.
  const entries = Array.isArray(templates)
    ? templates.map((t) => [t.name, t.when])
    : Object.entries(templates || {}).map(([name, t]) => [name, t && t.when]);
  const when = new Map(entries);
  const hit = lookupStatus(call) === "hit";
  const open = [];
  const create = [];
  for (const pop of call.screen_pop || []) {
    const url = safeUrl(pop.url);
    if (!url) continue;
    const kind = when.get(pop.name) || (hit ? "hit" : "miss");
    (kind === "miss" ? create : open).push({ name: pop.name, url });
  }
  return { open, create };
}

export function formatDuration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function stageLabel(type) {
  return STAGE_OF[type] || type;
}

/** The calls the client knows of, by call_id, kept current by apply(event). */
export class CallBook {
  constructor() {
    this.calls = new Map();
  }

  /** Apply one call event; answers the call it changed (or null for other events). */
  apply(event) {
    if (!event.call_id) return null;
    let call = this.calls.get(event.call_id);
    if (!call) {
      call = { call_id: event.call_id, timeline: [], first_seen: Date.now() };
      this.calls.set(event.call_id, call);
    }
    for (const key of CARRIED) {
      if (event[key] !== undefined) call[key] = event[key];
    }
    if (event.type === "call.recognized" && event.lookup) call.lookup = event.lookup;
    if (!call.state && event.type === "call.originated") call.state = "offered";
    call.timeline.push({ type: event.type, at: event.occurred_at, event_id: event.event_id });
    if (!ACTIVE.has(call.state)) call.ended_seen = call.ended_seen || Date.now();
    return call;
  }

  /** Calls on screen: active ones and those ended less than a minute ago, newest first. */
  live(now = Date.now()) {
    return [...this.calls.values()]
      .filter((c) => ACTIVE.has(c.state) || now - (c.ended_seen || now) < KEEP_ENDED_MS)
      .sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
  }

  /** Forget ended calls that left the screen (the history keeps them). */
  prune(now = Date.now()) {
    for (const [id, call] of this.calls) {
      if (!ACTIVE.has(call.state) && now - call.ended_seen > KEEP_ENDED_MS * 5) this.calls.delete(id);
    }
  }

  /** The active calls in which `extension` takes part. */
  activeFor(extension) {
    return [...this.calls.values()].filter(
      (c) => ACTIVE.has(c.state) && involves(c, extension),
    );
  }
}

/** Does `extension` take part in the call: as its extension, or as the internal caller. */
export function involves(call, extension) {
  if (call.extension === extension) return true;
  return call.direction === "internal" && call.calling && call.calling.number_raw === extension;
}

/**
 * Presence of one extension from its active calls: {state: "idle" | "ringing" | "busy",
 * held (busy with the call on hold), with: the other party's name or number}. Busy wins over ringing (a second call rings
 * while one is answered: the person is on the phone).
 */
export function presenceOf(extension, calls) {
  const answered = calls.find((c) => c.state === "established" || c.state === "held");
  const ringing = calls.find((c) => RINGING.has(c.state));
  const call = answered || ringing;
  if (!call) return { state: "idle", with: "" };
  const isRingingHere =
    !answered && ringing.extension === extension && ringing.direction !== "outbound";
  const party = withWhom(call, extension);
  if (isRingingHere) return { state: "ringing", with: party, call };
  // A click-to-dial phone leg (not the destination's leg that follows it) rings the
  // user's own phone: it is ringing for them too.
  if (!answered && ringing.originate && !ringing.parent_call_id) {
    return { state: "ringing", outgoing: true, with: party, call };
  }
  return { state: "busy", held: Boolean(answered && answered.state === "held"), with: party, call };
}

function withWhom(call, extension) {
  if (call.direction === "internal") {
    const other = call.extension === extension ? call.calling : call.called;
    if (!other) return "";
    const number = other.number_raw || "";
    return other.display || extensionNames[number] || (number ? `Extension ${number}` : "");
  }
  const party = remoteParty(call);
  return party.name || party.number;
}
