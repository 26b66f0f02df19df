/**
 * Building the page from data without ever parsing data as HTML: every string becomes a
 * text node (contact fields come from customers' CRMs and are untrusted), attributes are
 * set one by one, links only to http/https. No innerHTML anywhere in the client.
 */

import { safeUrl } from "./model.js";

/**
 * h("div", {class: "card", dataset: {callId}, on: {click: fn}}, "text", child, ...)
 * Children: strings (as text), nodes, arrays of either, null/false (skipped).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "on") for (const [name, fn] of Object.entries(value)) el.addEventListener(name, fn);
    else if (key === "href") throw new Error("use link() for hrefs");
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** A link that opens in a new tab, or null when the URL is not http/https. */
export function link(url, props, ...children) {
  const safe = safeUrl(url);
  if (!safe) return null;
  const a = h("a", { target: "_blank", rel: "noopener noreferrer", ...props }, ...children);
  a.href = safe;
  return a;
}

/** Replace the children of `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function byId(id) {
  return document.getElementById(id);
}

export function show(el, visible) {
  el.hidden = !visible;
}
