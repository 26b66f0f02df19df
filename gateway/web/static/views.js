/**
 * Renderers: data in, DOM nodes out (no state of their own). Contact fields, numbers and
 * display names are untrusted and only ever become text nodes.
 */

import { h, link } from "./dom.js";
import {
  callbackNumber, formatDuration, lookupStatus, remoteParty, screenPops, stageLabel,
} from "./model.js";

const STATE_LABEL = {
  offered: "Incoming",
  delivered: "Ringing",
  established: "Answered",
  held: "On hold",
  cleared: "Ended",
  failed: "Failed",
};
const DIRECTION = {
  inbound: ["↙", "Inbound"],
  outbound: ["↗", "Outbound"],
  internal: ["↔", "Internal"],
};
const CAUSE_LABEL = {
  busy: "Busy",
  no_answer: "No answer",
  cancelled: "Caller hung up",
  rejected: "Rejected",
  diverted: "Diverted",
  replaced: "Taken over",
  timeout: "Timed out",
  error: "Error",
  normal: "Ended",
};

export function timeOf(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  const today = new Date();
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (when.toDateString() === today.toDateString()) return time;
  return `${when.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

export function stateText(call) {
  if (call.missed) return "Missed";
  if (call.state === "failed") return CAUSE_LABEL[call.cause && call.cause.normalized] || "Failed";
  return STATE_LABEL[call.state] || call.state || "";
}

function directionIcon(direction) {
  const [glyph, label] = DIRECTION[direction] || ["•", direction || ""];
  return h("span", { class: `dir dir-${direction}`, title: label, "aria-label": label }, glyph);
}

/** The caller (or callee) block: name, company, number, each its own text node. */
export function partyBlock(call, { large = false } = {}) {
  const party = remoteParty(call);
  const status = lookupStatus(call);
  const note = status === "pending" ? "Looking up the caller…" : status === "miss" && !party.name ? "Not in your CRM" : "";
  return h("div", { class: `party${large ? " party-large" : ""}` },
    h("div", { class: "caller-name" }, party.name || party.number),
    party.company ? h("div", { class: "caller-company" }, party.company) : null,
    party.name ? h("div", { class: "caller-number" }, party.number) : null,
    note ? h("div", { class: `lookup-note lookup-${status}` }, note) : null);
}

/** "Open in CRM" for a known caller, "New contact" for an unknown one. */
export function popLinks(call, templates) {
  const { open, create } = screenPops(call, templates);
  const links = [];
  for (const pop of open) {
    links.push(link(pop.url, { class: "button primary open-crm", dataset: { pop: pop.name } }, "Open in CRM"));
  }
  for (const pop of create) {
    links.push(link(pop.url, { class: "button secondary new-contact", dataset: { pop: pop.name } }, "New contact"));
  }
  return links.length ? h("div", { class: "pop-links" }, links) : null;
}

function durationOf(call, now) {
  if (call.duration_ms !== undefined) return formatDuration(call.duration_ms);
  if (call.answered_at && (call.state === "established" || call.state === "held")) {
    return formatDuration(now - Date.parse(call.answered_at));
  }
  return "";
}

/** The live duration element: app.js refreshes every `.ticking` once a second. */
function durationEl(call, skew) {
  const ticking = !call.duration_ms && call.answered_at && (call.state === "established" || call.state === "held");
  return h("span", {
    class: `duration${ticking ? " ticking" : ""}`,
    dataset: ticking ? { since: String(Date.parse(call.answered_at) - skew) } : {},
  }, durationOf(call, Date.now() + skew));
}

function timeline(call) {
  return h("ol", { class: "timeline" },
    call.timeline.map((step) => h("li", { dataset: { eventId: step.event_id || "", type: step.type } },
      h("span", { class: "stage" }, stageLabel(step.type)),
      h("time", { datetime: step.at || "" }, timeOf(step.at)))));
}

/** One row of the live calls list. */
export function liveCall(call, { templates, showExtension, skew }) {
  return h("li", { class: `call state-${call.state}${call.missed ? " missed" : ""}`, dataset: { callId: call.call_id, state: call.state || "" } },
    directionIcon(call.direction),
    h("div", { class: "call-main" },
      partyBlock(call),
      timeline(call)),
    h("div", { class: "call-side" },
      h("span", { class: `chip chip-${call.missed ? "missed" : call.state}` }, stateText(call)),
      durationEl(call, skew),
      showExtension && call.extension ? h("span", { class: "ext" }, `ext ${call.extension}`) : null,
      popLinks(call, templates)));
}

/** The incoming-call card (a screen pop inside the page). */
export function incomingCard(call, { templates, skew }) {
  const ringing = call.state === "offered" || call.state === "delivered";
  const title = ringing ? "Incoming call" : stateText(call);
  return h("article", { class: `incoming-card state-${call.state}`, dataset: { callId: call.call_id, state: call.state || "", lookup: lookupStatus(call) } },
    h("div", { class: "incoming-head" },
      h("span", { class: `ring${ringing ? " ringing" : ""}` }),
      h("span", { class: "incoming-title" }, title),
      durationEl(call, skew),
      call.extension ? h("span", { class: "ext" }, `to ext ${call.extension}`) : null),
    partyBlock(call, { large: true }),
    popLinks(call, templates));
}

/** One extension in the team list: the person (when named), the extension, with whom. */
export function presenceRow(extension, presence, name) {
  const verb = presence.state !== "ringing" ? "With" : presence.outgoing ? "Calling" : "Call from";
  const who = presence.with ? `${verb} ${presence.with}` : "";
  return h("li", { class: `presence-row presence-${presence.state}`, dataset: { extension, presence: presence.state } },
    h("span", { class: "presence-dot" }),
    h("div", { class: "presence-who" },
      h("div", { class: "presence-ext" }, name || `Extension ${extension}`,
        name ? h("span", { class: "presence-number" }, extension) : null),
      h("div", { class: "presence-with" }, who)),
    h("span", { class: "presence-state" }, presence.held ? "On hold" : { idle: "Available", ringing: "Ringing", busy: "On a call" }[presence.state]));
}

/** A missed call with its one-click call back. */
export function missedRow(call, onCall) {
  const number = callbackNumber(call);
  return h("li", { class: "missed-row", dataset: { callId: call.call_id || "" } },
    directionIcon(call.direction || "inbound"),
    partyBlock(call),
    h("div", { class: "missed-side" },
      h("time", { datetime: call.created_at || call.started_at || "" }, timeOf(call.created_at || call.started_at)),
      number ? h("button", { type: "button", class: "secondary small call-back", on: { click: () => onCall(number) } }, "Call back") : null));
}

/** History rows come from /v1/history (`contact`, `from`, `to`): shaped like a call. */
export function historyAsCall(row) {
  const asParty = (number, display) =>
    number || display ? { number_raw: number ? String(number) : "", display: display || undefined } : undefined;
  return {
    ...row,
    created_at: row.started_at,
    calling: row.calling || asParty(row.from, row.from_display),
    called: row.called || asParty(row.to, row.to_display),
    lookup: row.contact ? { status: "hit", contact: row.contact } : row.lookup,
    duration_ms: row.duration_s === null || row.duration_s === undefined ? undefined : row.duration_s * 1000,
  };
}

function outcomeText(row) {
  if (row.missed) return "Missed";
  const text = String(row.outcome || "").replace(/_/g, " ");
  return text ? text[0].toUpperCase() + text.slice(1) : "";
}

export function historyRow(row, { onCall, templates }) {
  const call = historyAsCall(row);
  const number = callbackNumber(call);
  return h("tr", { class: `history-row${row.missed ? " missed" : ""}`, dataset: { callId: row.call_id || "", outcome: row.outcome || "" } },
    h("td", { class: "when" }, timeOf(row.started_at)),
    h("td", {}, directionIcon(row.direction)),
    h("td", { class: "party-cell" }, partyBlock(call)),
    h("td", { class: "col-ext" }, row.extension || ""),
    h("td", { class: "duration" }, call.duration_ms !== undefined && row.answered_at ? formatDuration(call.duration_ms) : "–"),
    h("td", {}, h("span", { class: `chip outcome outcome-${row.missed ? "missed" : row.outcome || "none"}` }, outcomeText(row))),
    h("td", { class: "actions" },
      h("div", { class: "row-actions" },
        crmLink(call, templates),
        number ? h("button", { type: "button", class: "secondary small call-number", on: { click: () => onCall(number) } }, "Call") : null)));
}

/** A history row's small link into the CRM record, when the call was recognized. */
function crmLink(call, templates) {
  const [record] = screenPops(call, templates).open;
  return record ? link(record.url, { class: "button small ghost open-crm" }, "CRM") : null;
}

const DIAL_STEPS = [
  ["phone", "Ringing your phone"],
  ["connecting", "Connecting"],
  ["destination", "Ringing"],
  ["connected", "Connected"],
];

/** The click-to-dial progress: the steps reached, the current one, failure and cancel. */
export function dialProgress(dial, onCancel) {
  const reached = dial.reached;
  const failed = ["failed", "cancelled"].includes(dial.state);
  const steps = DIAL_STEPS.map(([key, label], index) => {
    const done = reached.has(key);
    const current = !failed && !dial.finished && done && !DIAL_STEPS.slice(index + 1).some(([k]) => reached.has(k));
    return h("li", { class: `step${done ? " done" : ""}${current ? " current" : ""}`, dataset: { step: key, reached: String(done) } },
      h("span", { class: "step-dot" }), key === "destination" ? `${label} ${dial.toLabel}` : label);
  });
  let outcome = null;
  if (dial.state === "failed") outcome = h("p", { class: "dial-outcome error", id: "dial-outcome" }, dial.message || "The call failed");
  else if (dial.state === "cancelled") outcome = h("p", { class: "dial-outcome", id: "dial-outcome" }, "Cancelled");
  else if (dial.state === "ended") outcome = h("p", { class: "dial-outcome", id: "dial-outcome" }, "Call ended");
  return [
    h("div", { class: "dial-head" },
      h("span", { class: "dial-to" }, `Calling ${dial.toLabel}`),
      h("span", { class: `chip dial-state dial-${dial.state}`, id: "dial-state", dataset: { state: dial.state } }, dial.stateLabel),
      !dial.finished ? h("button", { type: "button", class: "secondary small", id: "dial-cancel", on: { click: onCancel } }, "Cancel") : null),
    h("ol", { class: "steps" }, steps),
    outcome,
  ];
}
