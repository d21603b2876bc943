// The push connection (GET /api/v1/ws): reconnects with backoff, resumes with since/epoch so
// nothing is lost or repeated, and drops any event frame whose seq it has already passed on.

import { wsURL } from "./api.js";

const BACKOFF_BASE = 500;
const BACKOFF_MAX = 15_000;
const CLOSE_TOKEN_EXPIRED = 4001;
const CLOSE_GOING_AWAY = 1001;

export class Socket {
  // handlers: onFrame(frame) for event, typing and presence frames; onReady({fresh, resynced})
  // after each ready: fresh when the client has to (re)load its state over REST, resynced when
  // that is because chatd could not resume (the state the client holds is no good at all);
  // onState(state) on every change of this.state.
  constructor(session, handlers) {
    this.session = session;
    this.handlers = handlers;
    this.ws = null;
    this.state = "connecting";
    this.retryAt = 0;
    this.lastSeq = 0; // highest stream seq received: the next since
    this.epoch = ""; // the stream epoch of the last ready: sent along with since
    this.fresh = true; // no state yet, or chatd said since cannot be resumed
    this.resynced = false; // chatd said since cannot be resumed
    this.attempt = 0; // reconnects since the last ready
    this.timer = null;
    window.addEventListener("online", () => this.reconnectNow());
    window.addEventListener("offline", () => this.goOffline());
  }

  start() {
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.drop();
    if (!navigator.onLine) return this.setState("offline");
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    const url = wsURL();
    const token = this.session.token;
    url.searchParams.set("token", token);
    if (this.epoch) {
      url.searchParams.set("since", this.lastSeq);
      url.searchParams.set("epoch", this.epoch);
    }
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onmessage = (event) => ws === this.ws && this.receive(event.data);
    ws.onclose = (event) => ws === this.ws && this.closed(event.code, token);
  }

  // reconnectNow skips the rest of a backoff wait (the browser came back online, or the user
  // asked). It does nothing while connected or while waiting for a token.
  reconnectNow() {
    if (this.state === "reconnecting" || this.state === "offline") {
      this.attempt = Math.max(this.attempt, 1);
      this.connect();
    }
  }

  // goOffline closes the connection at once when the browser loses the network, rather than
  // waiting for the dead connection to time out; "online" brings it back.
  goOffline() {
    clearTimeout(this.timer);
    this.drop();
    this.setState("offline");
  }

  drop() {
    const ws = this.ws;
    this.ws = null; // its close event is ignored from here on
    ws?.close();
  }

  send(frame) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "ready":
        return this.ready(frame.data);
      case "resync_required":
        // The old seq means nothing any more: start from whatever ready says.
        this.fresh = true;
        this.resynced = true;
        this.lastSeq = 0;
        return;
      case "error":
        return console.warn("chatd:", frame.data?.message);
      case "typing":
      case "presence":
        return this.handlers.onFrame(frame);
    }
    if (!Number.isInteger(frame.seq) || frame.seq <= this.lastSeq) return; // unknown, or seen
    this.lastSeq = frame.seq;
    this.handlers.onFrame(frame);
  }

  ready({ epoch, seq }) {
    const { fresh, resynced } = this;
    this.fresh = false;
    this.resynced = false;
    this.epoch = epoch;
    this.lastSeq = Math.max(this.lastSeq, seq);
    this.attempt = 0;
    this.setState("online");
    this.handlers.onReady({ fresh, resynced });
  }

  async closed(code, token) {
    this.ws = null;
    if (code === CLOSE_TOKEN_EXPIRED || this.session.expired) {
      // Reconnecting with the same token would be refused: wait for the host's next one.
      this.setState("waiting-token");
      await this.session.renew(token);
      this.attempt = 1;
      return this.connect();
    }
    if (!navigator.onLine) return this.setState("offline");
    // Full jitter: a random wait up to an exponentially growing cap, so that the clients of a
    // node that went away do not all come back at the same moment. 1001 means "this node is
    // shutting down, try another one", so only a short jitter then.
    const cap = code === CLOSE_GOING_AWAY ? 1000 : Math.min(BACKOFF_MAX, BACKOFF_BASE * 2 ** this.attempt);
    this.attempt++;
    const delay = Math.random() * cap;
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  setState(state) {
    this.state = state;
    this.handlers.onState(state);
  }
}
