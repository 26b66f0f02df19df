/**
 * The sipgw web client: log in, live calls with screen pops and desktop notifications,
 * missed calls, click-to-dial (also from tel: links), team presence, history. Built on
 * sipgw.js; every event goes through one path: client -> CallBook -> render.
 */

import { SipgwClient } from "./sipgw.js";
import { byId, fill, h, show } from "./dom.js";
import {
  ACTIVE, CallBook, formatDuration, presenceOf, remoteParty, screenPops, setExtensionNames,
} from "./model.js";
import { codeFields, enrolmentFields, recoveryCodesFields } from "./enrol.js";
import { buildShell } from "./shell.js";
import * as views from "./views.js";

const TOKEN_KEY = "sipgw.token";
const SEQ_KEY = "sipgw.seq";
const STALE_MS = 60000; // an event older than this (a replay) pops nothing up
const CARD_AFTER_END_MS = 8000; // the incoming card stays this long after the call ended
const DIAL_POLL_MS = 800;
const DIAL_LABEL = {
  calling_phone: "Calling your phone",
  phone_ringing: "Your phone is ringing",
  connecting: "Connecting",
  destination_ringing: "Ringing",
  connected: "Connected",
  ended: "Ended",
  failed: "Failed",
  cancelled: "Cancelled",
};
// Which progress steps each state of a dial request implies (click-to-dial.md "States").
const DIAL_REACHED = {
  calling_phone: ["phone"],
  phone_ringing: ["phone"],
  connecting: ["phone", "connecting"],
  destination_ringing: ["phone", "connecting", "destination"],
  connected: ["phone", "connecting", "destination", "connected"],
};

const mode = document.body.dataset.mode === "embed" ? "embed" : "full";
const ui = buildShell(byId("root"));
const client = new SipgwClient({ token: sessionStorage.getItem(TOKEN_KEY) });
const channel = "BroadcastChannel" in window ? new BroadcastChannel("sipgw") : null;

const app = {
  me: null,
  book: new CallBook(),
  skew: 0, // the gateway's clock minus ours (durations count from answered_at)
  missed: [],
  missedSeenAt: 0,
  dial: null,
  historyCursor: null,
  historyLoaded: false,
  view: "calls",
  notified: new Map(), // call_id -> Notification
  autoOpened: new Set(),
  ticker: null,
  renderQueued: false,
};
// A handle for integrators and tests poking at a running page (the console, Selenium).
window.sipgwApp = { client, app };

// The challenge between the password and the code of a login: in memory only, never
// stored (it stands for a right password for five minutes).
let loginChallenge = null;
let loginEnrolCode = null; // the enrolment step's code input, while it is on show
// The step of the user's own enrolment while its dialog is open ("enrol", "recovery"),
// and the code input of the "enrol" step.
let totpStep = null;
let totpCode = null;

// The login's steps (docs/web-client.md "Second factor"): the password; then the code
// of an enrolled user, or the enrolment of a user the tenant obliges to enrol and the
// recovery codes it gives. Each step shows its own fields; the others are hidden, and
// those holding a secret (the enrolment, the recovery codes) are emptied.
const LOGIN_STEPS = {
  password: { button: "Sign in", fields: () => ui.loginFirstStep },
  code: { button: "Verify", fields: () => ui.loginCodeStep },
  enrol: { button: "Verify and continue", fields: () => ui.loginEnrolStep },
  recovery: { button: "Continue", fields: () => ui.loginRecoveryStep },
};

// -- start ------------------------------------------------------------------------------

boot();

async function boot() {
  wireStaticHandlers();
  const pending = takeDialFromUrl();
  if (!client.token) {
    if (pending && (await handOffToOpenWindow(pending))) return;
    return showLogin(pending ? `Sign in to call ${pending}.` : "", pending);
  }
  await start(pending);
}

/** `/?dial=tel:+31612345678` (the tel: handler's URL): the number, and the URL cleaned. */
function takeDialFromUrl() {
  const params = new URLSearchParams(location.search);
  const raw = params.get("dial");
  if (!raw) return null;
  params.delete("dial");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
  let number = raw.trim().replace(/^tel:/i, "");
  number = number.split(";")[0]; // tel: parameters (;phone-context=...) are not dialled
  try {
    number = decodeURIComponent(number);
  } catch {
    /* keep as it came */
  }
  return number.replace(/[^0-9+*#() .-]/g, "").trim() || null;
}

/** A tel: link opened a new tab: let a signed-in sipgw tab handle it, if there is one. */
function handOffToOpenWindow(number) {
  if (!channel) return Promise.resolve(false);
  const nonce = crypto.randomUUID();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      channel.removeEventListener("message", onAck);
      resolve(false);
    }, 600);
    function onAck(message) {
      if (message.data && message.data.type === "dial-ack" && message.data.nonce === nonce) {
        clearTimeout(timer);
        channel.removeEventListener("message", onAck);
        show(ui.loginView, true);
        fill(ui.loginForm, h("div", { class: "brand brand-large" }, h("span", { class: "logo" }), "sipgw"),
          h("p", { class: "handoff" }, `${number} is waiting in your open sipgw window: press Call there.`));
        resolve(true);
      }
    }
    channel.addEventListener("message", onAck);
    channel.postMessage({ type: "dial", to: number, nonce });
  });
}

function showLogin(message = "", pending = null) {
  stopLive();
  closeTotpDialog();
  show(ui.appView, false);
  show(ui.loginView, true);
  ui.loginNote.textContent = message;
  show(ui.loginNote, Boolean(message));
  show(ui.loginError, false);
  ui.loginForm.dataset.pending = pending || "";
  passwordStep();
}

function loginStep(step) {
  ui.loginForm.dataset.step = step;
  for (const [name, { fields }] of Object.entries(LOGIN_STEPS)) show(fields(), name === step);
  if (step !== "enrol") {
    fill(ui.loginEnrolStep);
    loginEnrolCode = null;
  }
  if (step !== "recovery") fill(ui.loginRecoveryStep);
  // Only the fields of the step on show are required (a hidden required field, such as
  // the password cleared after its step, would stop the form from being sent).
  ui.loginUser.required = step === "password";
  ui.loginPassword.required = step === "password";
  ui.loginCode.required = step === "code";
  ui.loginButton.textContent = LOGIN_STEPS[step].button;
}

function passwordStep() {
  loginChallenge = null;
  loginStep("password");
  ui.loginCode.value = "";
  ui.loginUser.focus();
}

function codeStep(challenge) {
  loginChallenge = challenge;
  loginStep("code");
  ui.loginCode.focus();
}

/** The tenant obliges this user to enrol: a new secret (with the login's challenge). */
async function enrolStep(challenge) {
  let enrolment;
  try {
    enrolment = await client.enrolSecondFactor({ challenge });
  } catch (err) {
    throw new Error(`Your organisation requires two-step sign-in, and setting it up failed: ${err.message}`);
  }
  loginChallenge = challenge;
  loginStep("enrol");
  const { root, code } = enrolmentFields(enrolment, "login-totp");
  loginEnrolCode = code;
  fill(ui.loginEnrolStep, h("p", { class: "note" }, "Your organisation requires two-step sign-in: set it up now."), root);
  code.focus();
}

function recoveryStep(codes) {
  loginChallenge = null;
  loginStep("recovery");
  const { root, saved } = recoveryCodesFields(codes, "login-totp");
  fill(ui.loginRecoveryStep, root);
  saved.focus();
}

function loginFailed(text) {
  ui.loginError.textContent = text;
  show(ui.loginError, true);
}

/** What the submit button does at each step; true when the login is done. */
const LOGIN_ACTIONS = {
  async password() {
    const answer = await client.login({
      username: ui.loginUser.value.trim(),
      password: ui.loginPassword.value,
      tenant: ui.loginTenant.value.trim() || undefined,
    });
    ui.loginPassword.value = "";
    if (answer.second_factor === "totp") return codeStep(answer.challenge), false;
    if (answer.second_factor === "enrol") return await enrolStep(answer.challenge), false;
    return true;
  },
  async code() {
    const typed = ui.loginCode.value.trim();
    const isCode = /^[0-9]{6}$/.test(typed);
    await client.verifySecondFactor({
      challenge: loginChallenge,
      code: isCode ? typed : undefined,
      recoveryCode: isCode ? undefined : typed,
    });
    return true;
  },
  async enrol() {
    const code = loginEnrolCode.value.trim();
    const answer = await client.confirmSecondFactor({ code, challenge: loginChallenge });
    recoveryStep(answer.recovery_codes || []);
    return false;
  },
  async recovery() {
    return true; // the "I have saved them" box is required: the form is not sent without it
  },
};

async function onLogin(submit) {
  submit.preventDefault();
  ui.loginButton.disabled = true;
  show(ui.loginError, false);
  const step = ui.loginForm.dataset.step;
  try {
    if (!(await LOGIN_ACTIONS[step]())) return;
    sessionStorage.setItem(TOKEN_KEY, client.token);
    sessionStorage.removeItem(SEQ_KEY);
    loginChallenge = null;
    fill(ui.loginRecoveryStep); // shown once: gone from the page now
    await start(ui.loginForm.dataset.pending || null);
  } catch (err) {
    passwordStep(); // a code's challenge went with this attempt
    const wrong = step === "enrol" ? "Wrong or expired code: sign in again and scan the new QR code."
      : step === "code" ? "Wrong or expired code: sign in again." : "Wrong username or password.";
    loginFailed(err.status === 429 ? "Too many attempts: try again in a while." : err.status === 401 ? wrong : err.message);
  } finally {
    ui.loginButton.disabled = false;
  }
}

async function start(pendingDial) {
  try {
    app.me = await loadMe();
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showLogin(err.status === 401 ? "" : err.message, pendingDial);
  }
  app.skew = client.clockSkew;
  setExtensionNames(app.me.extension_names);
  show(ui.loginView, false);
  show(ui.appView, true);
  renderHeader();
  renderExtensionFilter();
  loadSecondFactor();
  app.missedSeenAt = Number(localStorage.getItem(missedKey()) || 0);
  ui.autoOpen.checked = autoOpenSetting();

  client.on("*", onEvent);
  client.on("state", onConnection);
  client.on("seq", (seq) => sessionStorage.setItem(SEQ_KEY, seq));
  client.on("lost", () => toast("Some events were too old to replay; the history has them."));
  client.connect({ since: sessionStorage.getItem(SEQ_KEY) || undefined });
  if (channel) channel.onmessage = onChannel;
  app.ticker = setInterval(tick, 1000);

  render();
  loadMissed();
  if (mode === "full") loadHistory(true);
  if (pendingDial) offerDial(pendingDial);
}

function stopLive() {
  client.disconnect();
  clearInterval(app.ticker);
  if (channel) channel.onmessage = null;
}

/** /v1/me, or what /v1/auth/me says on a gateway without it. */
async function loadMe() {
  try {
    return await client.me();
  } catch (err) {
    if (err.status !== 404) throw err;
    const who = await client.request("GET", "/v1/auth/me");
    const extensions = who.extensions || [];
    return {
      tenant: who.tenant, username: who.user || who.username, role: who.role, extensions,
      sees: who.role === "admin" ? "tenant" : "extensions", visible_extensions: extensions,
      settings: {}, screen_pop: {},
    };
  }
}

async function logout() {
  stopLive();
  try {
    await client.logout();
  } catch {
    /* the token is forgotten either way */
  }
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(SEQ_KEY);
  location.replace(location.pathname);
}

// -- the second factor, from the user menu -----------------------------------------------

/** The user menu says whether two-step sign-in is on, and offers to set it up when the
 * tenant lets users have it. */
async function loadSecondFactor() {
  let status = null;
  try {
    status = await client.secondFactor();
  } catch {
    /* an older gateway, or a token without a user: nothing to show */
  }
  const on = Boolean(status && status.enrolled);
  ui.totpStatus.textContent = on ? `Two-step sign-in is on · ${status.recovery_codes_left} recovery codes left` : "";
  show(ui.totpStatus, on);
  show(ui.totpButton, Boolean(status) && !on && status.policy !== "off");
  show(ui.totpRenew, on);
  show(ui.totpOff, on && !status.required);
}

/** The menu's "New recovery codes" and "Turn off": the dialog asks for a current code. */
function openTotpCodeDialog(step) {
  show(ui.userPanel, false);
  const prompt = step === "renew"
    ? "Type the code your app shows now: you get ten new recovery codes, and the old ones stop working."
    : "Type the code your app shows now to turn two-step sign-in off.";
  const { root, code } = codeFields(prompt, "totp");
  totpStep = step;
  totpCode = code;
  fill(ui.totpBody, root);
  show(ui.totpError, false);
  show(ui.totpCancel, true);
  ui.totpSubmit.textContent = step === "renew" ? "Make new codes" : "Turn off";
  ui.totpDialog.showModal();
  code.focus();
}

async function openTotpDialog() {
  show(ui.userPanel, false);
  let enrolment;
  try {
    enrolment = await client.enrolSecondFactor();
  } catch (err) {
    return toast(`Two-step sign-in cannot be set up: ${err.message}`);
  }
  const { root, code } = enrolmentFields(enrolment, "totp");
  totpStep = "enrol";
  totpCode = code;
  fill(ui.totpBody, root);
  show(ui.totpError, false);
  show(ui.totpCancel, true);
  ui.totpSubmit.textContent = "Verify";
  ui.totpDialog.showModal();
  code.focus();
}

async function onTotpSubmit(submit) {
  submit.preventDefault();
  ui.totpSubmit.disabled = true;
  show(ui.totpError, false);
  try {
    if (totpStep === "off") {
      await client.turnOffSecondFactor({ code: totpCode.value.trim() });
      closeTotpDialog();
      toast("Two-step sign-in is off.");
      loadSecondFactor();
    } else if (totpStep === "enrol" || totpStep === "renew") {
      const code = totpCode.value.trim();
      const answer = totpStep === "enrol"
        ? await client.confirmSecondFactor({ code })
        : await client.newRecoveryCodes({ code });
      const { root, saved } = recoveryCodesFields(answer.recovery_codes || [], "totp");
      totpStep = "recovery";
      totpCode = null;
      fill(ui.totpBody, root);
      show(ui.totpCancel, false); // enrolled now: the codes are shown this once
      ui.totpSubmit.textContent = "Done";
      saved.focus();
    } else {
      closeTotpDialog();
      toast("Two-step sign-in is on.");
      loadSecondFactor();
    }
  } catch (err) {
    // A wrong code leaves the pending enrolment (and the session): try the next code.
    ui.totpError.textContent = err.status === 401 ? "Wrong code: type the one your app shows now."
      : err.status === 429 ? "Too many attempts: try again in a while." : err.message;
    show(ui.totpError, true);
    totpCode?.select();
  } finally {
    ui.totpSubmit.disabled = false;
  }
}

/** Close the dialog and drop what it showed (the secret, the recovery codes). */
function closeTotpDialog() {
  totpStep = null;
  totpCode = null;
  fill(ui.totpBody);
  if (ui.totpDialog.open) ui.totpDialog.close();
}

// -- events -----------------------------------------------------------------------------

function onEvent(event) {
  const occurred = Date.parse(event.occurred_at || "");
  // An event cannot have happened after it arrived: if it looks so, our estimate of the
  // gateway's clock (from the Date header, to the second) was low.
  if (occurred - Date.now() > app.skew) app.skew = occurred - Date.now();
  const call = app.book.apply(event);
  if (!call) return;
  const fresh = !(Date.now() + app.skew - occurred > STALE_MS); // a replay pops nothing up
  if (isForMe(call)) popUp(call, event, fresh);
  if (event.missed && (isForMe(call) || !(app.me.extensions || []).length)) addMissed(call, fresh);
  if (app.dial && event.conversation_id === app.dial.conversation_id) onDialEvent(call, event);
  if (!ACTIVE.has(call.state) && app.historyLoaded) refreshHistorySoon();
  render();
}

/** Calls that ring at one of my own extensions (not those I place). */
function isForMe(call) {
  return (app.me.extensions || []).includes(call.extension) && call.direction !== "outbound";
}

/** Desktop notification and the CRM record, once per call, while it rings. */
function popUp(call, event, fresh) {
  const ringing = call.state === "offered" || call.state === "delivered";
  if (!fresh || !ringing) {
    if (!ringing) app.notified.get(call.call_id)?.close();
    return;
  }
  const party = remoteParty(call);
  const recognizedLate = event.type === "call.recognized";
  if ("Notification" in window && Notification.permission === "granted" &&
      (!app.notified.has(call.call_id) || recognizedLate)) {
    const body = [party.company, party.name ? party.number : ""].filter(Boolean).join("\n");
    try {
      const note = new Notification(party.name || party.number, {
        body: body || "Incoming call", tag: call.call_id, renotify: false, requireInteraction: true,
      });
      note.onclick = () => {
        window.focus();
        note.close();
      };
      app.notified.set(call.call_id, note);
    } catch {
      /* notifications can be unavailable (a frame, an old browser): the card is there */
    }
  }
  if (ui.autoOpen.checked && !app.autoOpened.has(call.call_id)) {
    const [record] = screenPops(call, app.me.screen_pop || {}).open;
    if (record) {
      app.autoOpened.add(call.call_id);
      window.open(record.url, "_blank", "noopener,noreferrer");
    }
  }
}

function onConnection({ state, retryIn, reason }) {
  ui.connection.dataset.state = state;
  const text = {
    idle: "Offline",
    connecting: "Connecting…",
    live: "Live",
    reconnecting: retryIn ? `Reconnecting in ${Math.ceil(retryIn / 1000)} s` : "Reconnecting…",
    unauthorized: "Signed out",
  }[state] || state;
  ui.connectionText.textContent = text;
  ui.connection.title = reason ? `${text}: ${reason}` : text;
  if (state === "unauthorized") {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(`Your session ended (${reason || "signed out"}). Sign in again.`);
  }
}

function onChannel(message) {
  const data = message.data || {};
  if (data.type === "dial" && typeof data.to === "string") {
    channel.postMessage({ type: "dial-ack", nonce: data.nonce });
    offerDial(data.to);
  }
}

// -- rendering --------------------------------------------------------------------------

/** Coalesce the renders of a burst of events into one. */
function render() {
  if (app.renderQueued) return;
  app.renderQueued = true;
  queueMicrotask(() => {
    app.renderQueued = false;
    renderIncoming();
    renderLive();
    renderPresence();
    renderMissed();
  });
}

function renderHeader() {
  const me = app.me;
  const ext = (me.extensions || []).join(", ");
  const name = (me.extension_names || {})[(me.extensions || [])[0]] || me.username;
  ui.userLabel.textContent = ext ? `${name} · ext ${ext}` : name;
  ui.avatar.textContent = initials(name);
  fill(ui.userDetail,
    h("div", { class: "menu-name" }, me.username),
    h("div", { class: "muted" }, `${me.tenant} · ${me.role}${ext ? ` · extension ${ext}` : ""}`),
    h("div", { class: "muted" }, me.sees === "tenant" ? "Sees every extension of the tenant" : "Sees own extensions"));
  show(ui.notifyButton, "Notification" in window && Notification.permission === "default");
  show(ui.telButton, "registerProtocolHandler" in navigator && mode === "full");
}

function initials(name) {
  const words = String(name || "?").split(/\s+/).filter(Boolean);
  if (words.length > 1) return (words[0][0] + words[1][0]).toUpperCase();
  return words[0].slice(0, 2).toUpperCase();
}

function renderExtensionFilter() {
  const extensions = visibleExtensions();
  const select = ui.historyExtension;
  fill(select, h("option", { value: "" }, "All extensions"),
    extensions.map(({ extension, label }) => h("option", { value: extension }, label)));
  show(select, extensions.length > 1);
}

/** The extensions this user may see, each with its person's name when the tenant has one. */
function visibleExtensions() {
  const list = app.me.visible_extensions || app.me.extensions || [];
  const names = app.me.extension_names || {};
  return list.map((extension) => ({ extension, name: names[extension] || "", label: names[extension] || `Extension ${extension}` }));
}

function renderIncoming() {
  const now = Date.now();
  const cards = [...app.book.calls.values()]
    .filter((c) => isForMe(c) && (ACTIVE.has(c.state) || now - c.ended_seen < CARD_AFTER_END_MS))
    .sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""))
    .map((c) => views.incomingCard(c, { templates: app.me.screen_pop || {}, skew: app.skew }));
  fill(ui.incoming, cards);
}

function renderLive() {
  const calls = app.book.live();
  const showExtension = visibleExtensions().length > 1;
  fill(ui.liveCalls, calls.map((c) => views.liveCall(c, {
    templates: app.me.screen_pop || {}, showExtension, skew: app.skew,
  })));
  show(ui.liveEmpty, calls.length === 0);
  const active = calls.filter((c) => ACTIVE.has(c.state)).length;
  ui.liveCount.textContent = active ? String(active) : "";
}

function renderPresence() {
  fill(ui.presence, visibleExtensions().map(({ extension, name }) =>
    views.presenceRow(extension, presenceOf(extension, app.book.activeFor(extension)), name)));
}

function renderMissed() {
  // A call counts from when it was missed (it may have started ringing before the list was seen).
  const unseen = app.missed.filter((c) => Date.parse(c.ended_at || c.created_at || 0) > app.missedSeenAt).length;
  ui.missedBadge.textContent = unseen > 99 ? "99+" : String(unseen);
  show(ui.missedBadge, unseen > 0);
  const rows = (list) => list.map((c) => views.missedRow(c, callNumber));
  fill(ui.missedList, rows(app.missed));
  fill(ui.missedShort, rows(app.missed.slice(0, 5)));
  show(ui.missedEmpty, app.missed.length === 0);
  show(ui.missedShortEmpty, app.missed.length === 0);
}

function tick() {
  for (const el of document.querySelectorAll(".duration.ticking")) {
    const text = formatDuration(Date.now() - Number(el.dataset.since));
    if (el.textContent !== text) el.textContent = text;
  }
  // Ended calls leave the screen after a while; re-render when one is due.
  let due = false;
  for (const call of app.book.calls.values()) {
    if (call.ended_seen && !call.gone && Date.now() - call.ended_seen > CARD_AFTER_END_MS) {
      call.gone = true;
      due = true;
    }
  }
  if (due) render();
  app.book.prune();
}

function toast(text) {
  ui.toast.textContent = text;
  show(ui.toast, true);
  clearTimeout(ui.toast.timer);
  ui.toast.timer = setTimeout(() => show(ui.toast, false), 5000);
}

function switchView(view) {
  app.view = view;
  for (const name of ["calls", "missed", "history"]) {
    show(ui[`${name}View`], name === view);
    byId(`tab-${name}`).classList.toggle("active", name === view);
  }
  if (view === "missed") markMissedSeen();
  if (view === "history" && !app.historyLoaded) loadHistory(true);
}

// -- missed calls -----------------------------------------------------------------------

async function loadMissed() {
  try {
    const filters = { missed: true, limit: 50 };
    const own = app.me.extensions || [];
    if (own.length === 1) filters.extension = own[0];
    const { calls } = await client.history(filters);
    const known = new Set(app.missed.map((c) => c.call_id));
    app.missed = [...app.missed, ...calls.map(views.historyAsCall).filter((c) => !known.has(c.call_id))];
    renderMissed();
  } catch {
    /* no history on this gateway: missed calls come from live events only */
  }
}

function addMissed(call, fresh) {
  if (app.missed.some((c) => c.call_id === call.call_id)) return;
  app.missed.unshift({ ...call });
  if (fresh && app.view === "missed") markMissedSeen();
}

function markMissedSeen() {
  app.missedSeenAt = Date.now() + app.skew;
  localStorage.setItem(missedKey(), String(app.missedSeenAt));
  renderMissed();
}

function missedKey() {
  return `sipgw.missedSeen.${app.me.tenant}.${app.me.username}`;
}

// -- click-to-dial ----------------------------------------------------------------------

/** Dial from history, missed calls: one click. */
function callNumber(number) {
  ui.dialInput.value = number;
  if (mode === "full") switchView("calls");
  startDial(number);
}

/** A number from a tel: link: filled in, waiting for the user's Call. */
function offerDial(number) {
  if (mode === "full") switchView("calls");
  ui.dialInput.value = number;
  ui.dialButton.focus();
  toast(`Press Call to dial ${number}.`);
}

async function startDial(to) {
  to = String(to || "").trim();
  if (!to) return ui.dialInput.focus();
  if (app.dial && !app.dial.finished) return toast("A call is already being set up: cancel it first.");
  show(ui.toast, false);
  ui.dialButton.disabled = true;
  try {
    const request = await client.dial(to, { requestId: `web-${crypto.randomUUID()}` });
    app.dial = {
      id: request.id, conversation_id: request.conversation_id, phone_call_id: request.phone_call_id,
      toLabel: to, reached: new Set(), state: "", finished: false,
    };
    updateDial(request);
    pollDial(app.dial);
  } catch (err) {
    app.dial = null;
    show(ui.dialProgress, true);
    fill(ui.dialProgress, h("p", { class: "dial-outcome error", id: "dial-outcome" }, err.message));
  } finally {
    ui.dialButton.disabled = false;
  }
}

function updateDial(request) {
  const dial = app.dial;
  if (!dial || request.id !== dial.id) return;
  for (const step of DIAL_REACHED[request.state] || []) dial.reached.add(step);
  dial.state = request.state;
  dial.finished = Boolean(request.finished);
  dial.message = request.cause && request.cause.message;
  const to = request.to && (request.to.e164 || request.to.dialled);
  if (to && to !== dial.toLabel && !dial.toLabel.includes(to)) dial.toLabel = `${dial.toLabel} (${to})`;
  renderDial();
}

/** Events of the dial's conversation move the progress on before the next poll does. */
function onDialEvent(call, event) {
  const dial = app.dial;
  const phoneLeg = call.call_id === dial.phone_call_id;
  if (phoneLeg && event.type === "call.delivered") dial.reached.add("phone");
  if (phoneLeg && event.type === "call.established") dial.reached.add("connecting");
  if (!phoneLeg && (event.type === "call.offered" || event.type === "call.delivered")) {
    dial.reached.add("connecting");
    dial.reached.add("destination");
  }
  if (!phoneLeg && event.type === "call.established") {
    ["connecting", "destination", "connected"].forEach((s) => dial.reached.add(s));
  }
  renderDial();
  refreshDial(dial);
}

async function refreshDial(dial) {
  try {
    updateDial(await client.dialStatus(dial.id));
  } catch {
    /* the next poll tries again */
  }
}

async function pollDial(dial) {
  while (app.dial === dial && !dial.finished) {
    await new Promise((resolve) => setTimeout(resolve, DIAL_POLL_MS));
    if (app.dial !== dial || dial.finished) break;
    await refreshDial(dial);
  }
}

async function cancelDial() {
  const dial = app.dial;
  if (!dial || dial.finished) return;
  try {
    updateDial(await client.cancel(dial.id));
  } catch (err) {
    toast(err.message);
    refreshDial(dial);
  }
}

function renderDial() {
  const dial = app.dial;
  show(ui.dialProgress, Boolean(dial));
  if (!dial) return;
  dial.stateLabel = DIAL_LABEL[dial.state] || dial.state;
  ui.dialProgress.dataset.state = dial.state;
  fill(ui.dialProgress, views.dialProgress(dial, cancelDial));
}

// -- history ----------------------------------------------------------------------------

let historyTimer = null;
function refreshHistorySoon() {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(() => loadHistory(true), 1500);
}

function historyFilters() {
  const day = (value, end) => (value ? new Date(`${value}T${end ? "23:59:59.999" : "00:00:00"}`).toISOString() : undefined);
  return {
    q: ui.historyQuery.value.trim() || undefined,
    direction: ui.historyDirection.value || undefined,
    extension: ui.historyExtension.value || undefined,
    missed: ui.historyMissed.checked ? true : undefined,
    since: day(ui.historySince.value, false),
    until: day(ui.historyUntil.value, true),
    limit: 50,
  };
}

let historyRequests = 0;

async function loadHistory(reset) {
  const filters = historyFilters();
  if (!reset && app.historyCursor) filters.cursor = app.historyCursor;
  const mine = ++historyRequests; // only the latest request's answer is shown
  ui.historyView.dataset.loading = "true";
  try {
    const { calls, next_cursor: next } = await client.history(filters);
    if (mine !== historyRequests) return;
    const templates = app.me.screen_pop || {};
    const rows = calls.map((row) => views.historyRow(row, { onCall: callNumber, templates }));
    if (reset) fill(ui.historyBody, rows);
    else ui.historyBody.append(...rows);
    app.historyCursor = next || null;
    app.historyLoaded = true;
    show(ui.historyMore, Boolean(next));
    show(ui.historyEmpty, ui.historyBody.children.length === 0);
    ui.historyEmpty.textContent = "No calls match.";
  } catch (err) {
    if (mine !== historyRequests) return;
    if (reset) fill(ui.historyBody);
    show(ui.historyEmpty, true);
    ui.historyEmpty.textContent = err.status === 404 ? "History is not available on this gateway." : err.message;
  } finally {
    if (mine === historyRequests) ui.historyView.dataset.loading = "false";
  }
}

// -- settings ---------------------------------------------------------------------------

function autoOpenKey() {
  return `sipgw.autoOpen.${app.me.tenant}.${app.me.username}`;
}

/** The per-user setting kept by the gateway (/v1/me); this browser's only without it. */
function autoOpenSetting() {
  const stored = app.me.settings && app.me.settings.auto_open_crm;
  if (typeof stored === "boolean") return stored;
  return localStorage.getItem(autoOpenKey()) === "true";
}

async function setAutoOpen(on) {
  try {
    const saved = await client.request("PUT", "/v1/me/settings", { auto_open_crm: on });
    app.me.settings = { ...(app.me.settings || {}), ...(saved && saved.settings ? saved.settings : saved) };
  } catch (err) {
    if (err.status === 404 || err.status === 405) {
      localStorage.setItem(autoOpenKey(), String(on));
      return;
    }
    ui.autoOpen.checked = !on;
    toast(`The setting was not saved: ${err.message}`);
  }
}

function registerTelHandler() {
  try {
    navigator.registerProtocolHandler("tel", `${location.origin}/?dial=%s`);
    toast("Your browser will ask to let sipgw open tel: links.");
  } catch (err) {
    toast(`This browser refused: ${err.message}`);
  }
}

// -- handlers on the fixed frame ------------------------------------------------------

function wireStaticHandlers() {
  ui.loginForm.addEventListener("submit", onLogin);
  ui.dialForm.addEventListener("submit", (e) => {
    e.preventDefault();
    startDial(ui.dialInput.value);
  });
  ui.historyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    loadHistory(true);
  });
  for (const input of [ui.historyDirection, ui.historyExtension, ui.historyMissed, ui.historySince, ui.historyUntil]) {
    input.addEventListener("change", () => loadHistory(true));
  }
  ui.historyMore.addEventListener("click", () => loadHistory(false));
  for (const button of document.querySelectorAll("[data-view]")) {
    button.addEventListener("click", () => switchView(button.dataset.view));
  }
  ui.userButton.addEventListener("click", () => show(ui.userPanel, ui.userPanel.hidden));
  document.addEventListener("click", (e) => {
    if (!ui.userPanel.hidden && !e.target.closest(".user-menu")) show(ui.userPanel, false);
  });
  ui.logoutButton.addEventListener("click", logout);
  ui.autoOpen.addEventListener("change", () => setAutoOpen(ui.autoOpen.checked));
  ui.telButton.addEventListener("click", registerTelHandler);
  ui.totpButton.addEventListener("click", openTotpDialog);
  ui.totpRenew.addEventListener("click", () => openTotpCodeDialog("renew"));
  ui.totpOff.addEventListener("click", () => openTotpCodeDialog("off"));
  ui.totpForm.addEventListener("submit", onTotpSubmit);
  ui.totpCancel.addEventListener("click", closeTotpDialog);
  ui.totpDialog.addEventListener("cancel", (e) => {
    e.preventDefault(); // Escape: not while the recovery codes wait for "I have saved them"
    if (totpStep !== "recovery") closeTotpDialog();
  });
  ui.notifyButton.addEventListener("click", async () => {
    await Notification.requestPermission();
    show(ui.notifyButton, Notification.permission === "default");
  });
}
