/**
 * Enrolling a second factor (TOTP; docs/web-client.md "Second factor"): the QR code and
 * the otpauth:// URI of a new secret with a field for the app's first code, then the
 * ten recovery codes, shown once. The login uses it when the tenant obliges the user
 * to enrol, the user menu when a user chooses to.
 *
 * Nothing here is ever stored (no localStorage, no sessionStorage): the secret and the
 * codes live in these elements only, and the caller removes them (`fill(container)`) as
 * soon as their step is over.
 */

import { h } from "./dom.js";

// What POST /v1/auth/totp/enrol gives as qr_svg; anything else is not shown (an <img>
// never runs an SVG's scripts, and the page's CSP allows images from data: only).
const QR_PREFIX = "data:image/svg+xml;base64,";

/**
 * The enrolment step for `enrolment` (the answer of POST /v1/auth/totp/enrol), its
 * element ids starting with `prefix`: {root, code} (code: the first code's input).
 */
export function enrolmentFields(enrolment, prefix) {
  const uri = h("input", {
    id: `${prefix}-uri`, class: "otpauth-uri", readonly: true, spellcheck: "false",
    autocomplete: "off", "aria-label": "Setup link for your authenticator app",
  });
  uri.value = enrolment.otpauth_uri;
  const code = h("input", {
    id: `${prefix}-code`, name: "one-time-code", autocomplete: "one-time-code",
    inputmode: "numeric", pattern: "[0-9]{6}", maxlength: 6, required: true,
  });
  const root = h("div", { class: "enrol", id: `${prefix}-enrol` },
    h("p", {}, "Scan this QR code with your authenticator app (or copy the setup link into it), then type the 6-digit code it shows."),
    qrImage(enrolment.qr_svg, `${prefix}-qr`),
    h("div", { class: "copy-row" }, uri, copyButton(`${prefix}-uri-copy`, () => enrolment.otpauth_uri)),
    h("label", {}, "First code from the app", code));
  return { root, code };
}

/**
 * A step that asks for a current code from the app (new recovery codes, turning two-step
 * sign-in off): {root, code}.
 */
export function codeFields(prompt, prefix) {
  const code = h("input", {
    id: `${prefix}-code`, name: "one-time-code", autocomplete: "one-time-code",
    inputmode: "numeric", pattern: "[0-9]{6}", maxlength: 6, required: true,
  });
  const root = h("div", { class: "enrol", id: `${prefix}-confirm` },
    h("p", {}, prompt), h("label", {}, "Code from the app", code));
  return { root, code };
}

/**
 * The ten recovery codes, shown once, and the "I have saved them" box that must be
 * ticked before going on: {root, saved}.
 */
export function recoveryCodesFields(codes, prefix) {
  const saved = h("input", { type: "checkbox", id: `${prefix}-saved`, required: true });
  const root = h("div", { class: "recovery", id: `${prefix}-recovery` },
    h("p", { class: "note" }, "Two-step sign-in is on. Save these recovery codes now: each signs you in once if you lose your phone, and they are shown only this once."),
    h("ol", { class: "recovery-codes", id: `${prefix}-recovery-codes` },
      codes.map((c) => h("li", {}, h("code", {}, c)))),
    copyButton(`${prefix}-recovery-copy`, () => codes.join("\n"), "Copy the codes"),
    h("label", { class: "check" }, saved, "I have saved my recovery codes"));
  return { root, saved };
}

function qrImage(dataUri, id) {
  if (typeof dataUri !== "string" || !dataUri.startsWith(QR_PREFIX)) return null;
  const img = h("img", { class: "qr", id, alt: "QR code for your authenticator app", width: 200, height: 200 });
  img.src = dataUri;
  return img;
}

function copyButton(id, text, label = "Copy") {
  const button = h("button", { type: "button", class: "secondary", id }, label);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text());
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy it";
    }
  });
  return button;
}
