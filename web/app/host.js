// The conversation with the host page: postMessage in both directions, and the user token the
// host hands over, which lives in memory only.

// HostBridge accepts messages only from the parent window, and only from an origin listed in
// the page's chatd-host-origins meta tag. The first chatd:init fixes the host origin; every later
// message must come from it, and every reply goes only to it.
export class HostBridge {
  constructor(allowedOrigins, { onMessage, onRefused }) {
    this.allowed = new Set(allowedOrigins);
    this.onMessage = onMessage;
    this.onRefused = onRefused;
    this.origin = null;
    window.addEventListener("message", (event) => this.receive(event));
  }

  receive(event) {
    if (event.source !== window.parent) return;
    const msg = event.data;
    if (!msg || typeof msg !== "object" || typeof msg.type !== "string") return;
    if (this.origin === null) {
      if (msg.type !== "chatd:init") return;
      if (!this.allowed.has(event.origin)) return this.onRefused(event.origin);
      this.origin = event.origin;
    } else if (event.origin !== this.origin) {
      return;
    }
    this.onMessage(msg);
  }

  post(msg) {
    if (this.origin !== null) window.parent.postMessage(msg, this.origin);
  }
}

// hostOrigins reads the origins allowed to embed this page from its chatd-host-origins meta
// tag (space-separated), normalized the way event.origin spells them.
export function hostOrigins() {
  const content = document.querySelector('meta[name="chatd-host-origins"]')?.content ?? "";
  const origins = [];
  for (const word of content.split(/\s+/).filter(Boolean)) {
    try {
      origins.push(new URL(word).origin);
    } catch {
      // not an origin (for example the template placeholder of an unrendered page)
    }
  }
  return origins.filter((o) => o !== "null");
}

// tokenExpiry reads the exp claim of a JWT without verifying it: chatd verifies, the client
// only needs to know when to ask for the next token.
export function tokenExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    const { exp } = JSON.parse(new TextDecoder().decode(bytes));
    return typeof exp === "number" ? new Date(exp * 1000) : null;
  } catch {
    return null;
  }
}

// Session holds the current token, warns the host before it expires, and lets callers wait for
// the next one (after a 401 or a WebSocket closed with 4001).
export class Session {
  constructor(post) {
    this.post = post;
    this.token = "";
    this.expiresAt = null;
    this.timers = [];
    this.waiters = [];
    this.onWaiting = () => {};
  }

  get waiting() {
    return this.waiters.length > 0;
  }

  get expired() {
    return this.expiresAt !== null && this.expiresAt.getTime() <= Date.now();
  }

  set(token) {
    if (typeof token !== "string" || token === "") return;
    this.token = token;
    this.expiresAt = tokenExpiry(token);
    this.schedule();
    const waiters = this.waiters.splice(0);
    waiters.forEach((resolve) => resolve());
    if (waiters.length) this.onWaiting(false);
  }

  // renew resolves once a token other than stale is in hand, asking the host for one if needed.
  renew(stale = this.token) {
    if (this.token !== stale && this.token !== "") return Promise.resolve();
    const next = new Promise((resolve) => this.waiters.push(resolve));
    if (this.waiters.length === 1) {
      this.warn();
      this.onWaiting(true);
    }
    return next;
  }

  warn() {
    const expires = this.expiresAt ?? new Date();
    this.post({ type: "chatd:token-expiring", expires_at: expires.toISOString() });
  }

  schedule() {
    this.timers.forEach(clearTimeout);
    this.timers = [];
    if (!this.expiresAt) return;
    const left = this.expiresAt.getTime() - Date.now();
    // Warn 60 s before exp and remind 15 s before. A token that arrives with less time left is
    // warned about at once; the Set folds the two warnings into one when both are already due.
    const warnings = new Set([left - 60_000, left - 15_000].map((ms) => Math.max(0, ms)));
    for (const ms of warnings) this.later(() => this.warn(), ms);
    this.later(() => this.post({ type: "chatd:token-expired" }), Math.max(0, left));
  }

  // later runs fn in ms. Browsers run a timer set further ahead than 2^31-1 ms (about 24.8 days)
  // at once, so a longer wait goes in steps; every step's timer is in this.timers.
  later(fn, ms) {
    const step = Math.min(ms, MAX_TIMER);
    this.timers.push(setTimeout(() => (ms > MAX_TIMER ? this.later(fn, ms - MAX_TIMER) : fn()), step));
  }
}

const MAX_TIMER = 2 ** 31 - 1;
