// Small DOM helpers. Everything that comes from users (names, titles, message bodies) enters
// the page as text nodes or attribute values, never as HTML.

export const $ = (id) => document.getElementById(id);

// h builds an element: h("button", { class: "x", onclick: fn, "aria-label": "Close" }, "text").
// Attributes that are null, undefined or false are left out; true sets an empty attribute.
// Children may be strings (added as text), nodes, or nested arrays of them.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// linkify turns text into a fragment where http(s) URLs are links that open in a new tab.
// Only http: and https: ever become links: the pattern cannot match other schemes, and the
// parsed URL is checked again.
const URL_PATTERN = /\bhttps?:\/\/[^\s<>"]+/gi;

export function linkify(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    const raw = trimUrl(match[0]);
    const href = safeHref(raw);
    if (!href) continue;
    fragment.append(
      text.slice(last, match.index),
      h("a", { href, target: "_blank", rel: "noopener noreferrer nofollow" }, raw),
    );
    last = match.index + raw.length;
  }
  fragment.append(text.slice(last));
  return fragment;
}

// trimUrl drops punctuation that ends a sentence rather than the URL ("see https://x.org.")
// and closing brackets that have no opening partner inside the URL.
function trimUrl(url) {
  const count = (s, c) => s.split(c).length - 1;
  for (;;) {
    const end = url.at(-1);
    if (".,;:!?'*".includes(end)) url = url.slice(0, -1);
    else if (end === ")" && count(url, "(") < count(url, ")")) url = url.slice(0, -1);
    else if (end === "]" && count(url, "[") < count(url, "]")) url = url.slice(0, -1);
    else return url;
  }
}

function safeHref(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const dayAndClock = new Intl.DateTimeFormat(undefined, {
  day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23",
});
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });

// timeLabel shows HH:MM for today and the day too for anything older.
function timeLabel(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? clock.format(date) : dayAndClock.format(date);
}

// setTime shows the short label in a <time> element, with the full date as a tooltip.
export function setTime(el, iso) {
  if (el.dateTime === iso) return;
  el.dateTime = iso;
  el.title = full.format(new Date(iso));
  el.textContent = timeLabel(iso);
}

export function timeElement(iso, className) {
  const el = h("time", { class: className });
  setTime(el, iso);
  return el;
}

// hue gives a stable colour for a user or conversation id, for avatars.
function hue(id) {
  let n = 0;
  for (const c of id) n = (n * 31 + c.charCodeAt(0)) % 360;
  return n;
}

function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean).map((w) => Array.from(w)); // by code point
  if (words.length === 0) return "?";
  const letters = words.length > 1 ? [words[0][0], words.at(-1)[0]] : words[0].slice(0, 2);
  return letters.join("").toUpperCase();
}

export function avatar(id, name) {
  const el = h("span", { class: "avatar", "aria-hidden": "true" }, initials(name));
  el.style.setProperty("--hue", hue(id));
  return el;
}

// debounce runs fn once, ms after the last call.
export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
