// The outbox holds the user's messages until chatd has them. Each keeps its client_msg_id for
// every attempt, so a retry of a message chatd did receive answers with the original instead
// of sending it twice.

const RETRY_BASE = 2_000;
const RETRY_MAX = 30_000;

export class Outbox {
  // send(entry) posts one message and resolves with chatd's Message. onChange(entry, message)
  // runs whenever an entry changes state; message is chatd's Message once it is sent.
  constructor({ send, onChange }) {
    this.send = send;
    this.onChange = onChange;
    this.entries = new Map(); // client_msg_id -> entry
    this.failures = 0; // consecutive retryable failures, for the backoff
    this.timer = null;
  }

  get size() {
    return this.entries.size;
  }

  forConversation(conversationId) {
    return [...this.entries.values()].filter((e) => e.conversation_id === conversationId);
  }

  add(conversationId, senderId, body) {
    const entry = {
      client_msg_id: newClientMsgId(),
      conversation_id: conversationId,
      sender_id: senderId,
      body,
      created_at: new Date().toISOString(),
      state: "sending",
      error: "",
      auto: true, // resend by itself when the connection is back
      inFlight: false,
    };
    this.entries.set(entry.client_msg_id, entry);
    this.attempt(entry);
    return entry;
  }

  async attempt(entry) {
    if (entry.inFlight) return;
    entry.inFlight = true;
    entry.state = "sending";
    entry.error = "";
    this.onChange(entry);
    try {
      this.settle(await this.send(entry));
      this.failures = 0;
    } catch (err) {
      if (!this.entries.has(entry.client_msg_id)) return; // its pushed event settled it meanwhile
      entry.state = "failed";
      entry.auto = err.retryable === true;
      entry.error = entry.auto ? "Not sent yet. It will be sent when the connection is back." : err.message;
      this.onChange(entry);
      if (entry.auto) this.retryLater();
    } finally {
      entry.inFlight = false;
    }
  }

  // settle takes chatd's Message (from the POST answer or the pushed event, whichever comes
  // first) for one of ours; the second arrival finds nothing left to do here.
  settle(message) {
    const entry = this.entries.get(message.client_msg_id);
    if (!entry || entry.conversation_id !== message.conversation_id) return;
    this.entries.delete(entry.client_msg_id);
    entry.state = "sent";
    this.onChange(entry, message);
  }

  discard(entry) {
    this.entries.delete(entry.client_msg_id);
  }

  // flush resends every message that failed for a passing reason.
  flush() {
    clearTimeout(this.timer);
    this.timer = null;
    for (const entry of this.entries.values()) {
      if (entry.auto && entry.state === "failed") this.attempt(entry);
    }
  }

  retryLater() {
    if (this.timer) return;
    const delay = Math.min(RETRY_MAX, RETRY_BASE * 2 ** this.failures++);
    this.timer = setTimeout(() => this.flush(), delay);
  }
}

// newClientMsgId makes a random id (crypto.randomUUID needs a secure context; this does not).
function newClientMsgId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "w-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
