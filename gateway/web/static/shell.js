/**
 * The page's fixed frame (login form, header, the three views), built once. index.html
 * and embed.html are empty shells, so both modes share this one layout; embed mode
 * (`<body data-mode="embed">`) is the same frame narrowed by app.css.
 */

import { h } from "./dom.js";

function panel(title, extra, ...body) {
  return h("section", { class: "panel" },
    h("div", { class: "panel-head" }, h("h2", {}, title), extra || null),
    ...body);
}

export function buildShell(root) {
  const refs = {};
  const ref = (name, el) => (refs[name] = el);

  const login = ref("loginView", h("section", { class: "login", hidden: true },
    ref("loginForm", h("form", { class: "login-card", id: "login-form", autocomplete: "on" },
      h("div", { class: "brand brand-large" }, h("span", { class: "logo" }), "sipgw"),
      h("p", { class: "muted" }, "Sign in to see who is calling and to dial from your browser."),
      ref("loginNote", h("p", { id: "login-note", class: "note", role: "status", hidden: true })),
      ref("loginFirstStep", h("div", { class: "login-step", id: "login-first-step" },
        h("label", {}, "Username",
          ref("loginUser", h("input", { id: "login-username", name: "username", autocomplete: "username", required: true }))),
        h("label", {}, "Password",
          ref("loginPassword", h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true }))),
        h("details", { class: "tenant-choice" },
          h("summary", {}, "Another organisation"),
          h("label", {}, "Tenant",
            ref("loginTenant", h("input", { id: "login-tenant", name: "tenant", autocomplete: "organization" })))))),
      // The second step, shown when the gateway asks for a code (docs/web-client.md).
      ref("loginCodeStep", h("div", { class: "login-step", id: "login-code-step", hidden: true },
        h("label", {}, "Code from your authenticator app",
          ref("loginCode", h("input", { id: "login-code", name: "one-time-code", autocomplete: "one-time-code", inputmode: "numeric", maxlength: 16 }))),
        h("p", { class: "muted" }, "Lost your phone? Type one of your recovery codes instead."))),
      // Enrolment during the login (a tenant that obliges the user), then the recovery
      // codes: filled by enrol.js for their step only, emptied after it.
      ref("loginEnrolStep", h("div", { class: "login-step", id: "login-enrol-step", hidden: true })),
      ref("loginRecoveryStep", h("div", { class: "login-step", id: "login-recovery-step", hidden: true })),
      ref("loginError", h("p", { id: "login-error", class: "error", role: "alert", hidden: true })),
      ref("loginButton", h("button", { type: "submit", class: "primary wide", id: "login-submit" }, "Sign in")))),
  ));

  const tab = (view, label, extra) =>
    h("button", { type: "button", class: "tab", dataset: { view }, id: `tab-${view}` }, label, extra || null);

  const header = h("header", { class: "topbar" },
    h("div", { class: "brand" }, h("span", { class: "logo" }), "sipgw"),
    ref("tabs", h("nav", { class: "tabs" },
      tab("calls", "Calls"),
      tab("missed", "Missed", ref("missedBadge", h("span", { class: "badge", id: "missed-badge", hidden: true }, "0"))),
      tab("history", "History"))),
    h("div", { class: "spacer" }),
    ref("connection", h("span", { class: "conn", id: "connection", dataset: { state: "idle" }, title: "Connection to the gateway" },
      h("span", { class: "dot" }), ref("connectionText", h("span", { class: "conn-text" }, "Offline")))),
    ref("notifyButton", h("button", { type: "button", class: "ghost", id: "notify-enable", hidden: true }, "Enable alerts")),
    h("div", { class: "user-menu" },
      ref("userButton", h("button", { type: "button", class: "user-button", id: "user-button", "aria-haspopup": "true" },
        ref("avatar", h("span", { class: "avatar" })), ref("userLabel", h("span", { class: "user-label" })))),
      ref("userPanel", h("div", { class: "menu", id: "user-panel", hidden: true },
        ref("userDetail", h("div", { class: "menu-detail" })),
        h("label", { class: "check" },
          ref("autoOpen", h("input", { type: "checkbox", id: "auto-open" })),
          "Open the CRM record automatically when a call comes in"),
        ref("telButton", h("button", { type: "button", class: "menu-item", id: "register-tel" }, "Dial tel: links with sipgw")),
        ref("totpStatus", h("div", { class: "menu-note muted", id: "totp-status", hidden: true })),
        ref("totpButton", h("button", { type: "button", class: "menu-item", id: "totp-setup", hidden: true }, "Set up two-step sign-in")),
        ref("totpRenew", h("button", { type: "button", class: "menu-item", id: "totp-renew", hidden: true }, "New recovery codes")),
        ref("totpOff", h("button", { type: "button", class: "menu-item", id: "totp-off", hidden: true }, "Turn off two-step sign-in")),
        ref("logoutButton", h("button", { type: "button", class: "menu-item danger", id: "logout" }, "Sign out"))))));

  const callsView = h("section", { class: "view view-calls", id: "view-calls" },
    h("div", { class: "col-main" },
      ref("incoming", h("div", { class: "incoming", id: "incoming", "aria-live": "polite" })),
      panel("Dial", null,
        ref("dialForm", h("form", { class: "dial-form", id: "dial-form" },
          ref("dialInput", h("input", { id: "dial-number", name: "to", inputmode: "tel", autocomplete: "off",
            placeholder: "Number or extension", "aria-label": "Number to dial" })),
          ref("dialButton", h("button", { type: "submit", class: "primary", id: "dial-submit" }, "Call")))),
        ref("dialProgress", h("div", { class: "dial-progress", id: "dial-progress", hidden: true }))),
      panel("Live calls", ref("liveCount", h("span", { class: "count", id: "live-count" })),
        ref("liveCalls", h("ul", { class: "calls", id: "live-calls" })),
        ref("liveEmpty", h("p", { class: "empty", id: "live-empty" }, "No calls right now.")))),
    h("aside", { class: "col-side" },
      panel("Team", null,
        ref("presence", h("ul", { class: "presence", id: "presence" }))),
      panel("Missed calls", h("button", { type: "button", class: "link-button", id: "missed-all", dataset: { view: "missed" } }, "All"),
        ref("missedShort", h("ul", { class: "missed", id: "missed-short" })),
        ref("missedShortEmpty", h("p", { class: "empty" }, "No missed calls.")))));

  const missedView = h("section", { class: "view view-missed", id: "view-missed", hidden: true },
    panel("Missed calls", null,
      ref("missedList", h("ul", { class: "missed", id: "missed-list" })),
      ref("missedEmpty", h("p", { class: "empty" }, "No missed calls."))));

  const historyView = h("section", { class: "view view-history", id: "view-history", hidden: true },
    panel("Call history", null,
      ref("historyForm", h("form", { class: "filters", id: "history-filters" },
        ref("historyQuery", h("input", { type: "search", id: "history-q", name: "q", placeholder: "Search name, company or number", "aria-label": "Search" })),
        ref("historyDirection", h("select", { id: "history-direction", name: "direction", "aria-label": "Direction" },
          h("option", { value: "" }, "All directions"),
          h("option", { value: "inbound" }, "Inbound"),
          h("option", { value: "outbound" }, "Outbound"),
          h("option", { value: "internal" }, "Internal"))),
        ref("historyExtension", h("select", { id: "history-extension", name: "extension", "aria-label": "Extension" },
          h("option", { value: "" }, "All extensions"))),
        h("label", { class: "filter-date" }, "From", ref("historySince", h("input", { type: "date", id: "history-since", name: "since" }))),
        h("label", { class: "filter-date" }, "To", ref("historyUntil", h("input", { type: "date", id: "history-until", name: "until" }))),
        h("label", { class: "check" }, ref("historyMissed", h("input", { type: "checkbox", id: "history-missed", name: "missed" })), "Missed only"),
        h("button", { type: "submit", class: "secondary" }, "Search"))),
      h("div", { class: "table-wrap" },
        h("table", { class: "history", id: "history-table" },
          h("thead", {}, h("tr", {},
            h("th", {}, "When"), h("th", {}, ""), h("th", { class: "party-cell" }, "Caller / callee"), h("th", { class: "col-ext" }, "Extension"),
            h("th", {}, "Duration"), h("th", {}, "Outcome"), h("th", {}, ""))),
          ref("historyBody", h("tbody", { id: "history-body" })))),
      ref("historyEmpty", h("p", { class: "empty", hidden: true }, "No calls match.")),
      ref("historyMore", h("button", { type: "button", class: "secondary", id: "history-more", hidden: true }, "Load more"))));

  const app = ref("appView", h("div", { class: "app", id: "app-view", hidden: true },
    header,
    h("main", {}, ref("callsView", callsView), ref("missedView", missedView), ref("historyView", historyView))));

  // A user's own enrolment, from the user menu (enrol.js fills the body, step by step).
  const totpDialog = ref("totpDialog", h("dialog", { class: "totp-dialog", id: "totp-dialog", "aria-labelledby": "totp-title" },
    ref("totpForm", h("form", { class: "login-card", id: "totp-form" },
      h("h2", { id: "totp-title" }, "Two-step sign-in"),
      ref("totpBody", h("div", { class: "login-step", id: "totp-body" })),
      ref("totpError", h("p", { id: "totp-error", class: "error", role: "alert", hidden: true })),
      h("div", { class: "dialog-buttons" },
        ref("totpCancel", h("button", { type: "button", class: "ghost", id: "totp-cancel" }, "Cancel")),
        ref("totpSubmit", h("button", { type: "submit", class: "primary", id: "totp-submit" }, "Verify")))))));

  ref("toast", h("div", { class: "toast", id: "toast", role: "status", hidden: true }));
  root.replaceChildren(login, app, totpDialog, refs.toast);
  return refs;
}
