// The open conversation's messages: history pages from REST, live messages from the socket,
// and the user's own messages from the moment they press Send. Each message is one entry with
// one DOM node, found by message id or, for the user's own, by client_msg_id, so a message that
// arrives twice (POST answer and pushed event, or a page overlapping a live message) is shown
// once.

import { $, h, linkify, setTime } from "./dom.js";

const PAGE = 15;
const ACTIONS = ["edit", "delete", "retry", "discard"]; // classes of a message's buttons
const NEAR_BOTTOM = 48; // px: closer than this to the end counts as "at the bottom"
const NEAR_TOP = 80; // px: scrolling up closer than this to the start loads older messages
const RUN = 5 * 60_000; // ms: messages by one sender this close together form a run
const TYPING_SHOWN = 4_000; // ms a typing frame is shown for (senders repeat it every 2-3 s)

export class MessageView {
  // deps: api, me, nameOf(userId), showError(message), onSeen() when the newest messages may
  // have been seen, onChanged(message) after an edit or deletion, retry(entry), discard(entry).
  constructor(deps) {
    Object.assign(this, deps);
    this.scroller = $("message-scroller");
    this.list = $("message-list");
    this.olderButton = $("load-older");
    this.historyStart = $("history-start");
    this.conv = null;
    this.generation = 0; // bumped on every open, so late answers for another conversation are dropped
    this.lastScrollTop = 0;
    this.reset();
    this.olderButton.addEventListener("click", () => this.loadOlder());
    this.scroller.addEventListener("scroll", () => this.scrolled(), { passive: true });
  }

  get id() {
    return this.conv?.id ?? null;
  }

  reset() {
    this.byId = new Map();
    this.byClient = new Map(); // the user's own messages by client_msg_id
    this.order = []; // entries in display order: by seq, unsent ones last
    this.localOrder = 0;
    this.highestSeq = 0;
    this.oldestSeq = 0;
    this.hasOlder = false;
    this.loadingOlder = false;
    this.list.replaceChildren();
    this.updateOlder(true);
  }

  open(conv) {
    this.generation++;
    this.conv = conv;
    this.reset();
  }

  close() {
    this.generation++;
    this.conv = null;
    this.reset();
  }

  // setConversation takes a newer view of the open conversation (members, creator).
  setConversation(conv) {
    this.conv = conv;
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.lastScrollTop = this.scroller.scrollTop;
  }

  scrolled() {
    const top = this.scroller.scrollTop;
    const up = top < this.lastScrollTop;
    this.lastScrollTop = top;
    if (up && top < NEAR_TOP) this.loadOlder();
    if (this.atBottom()) this.onSeen();
  }

  // loadNewest shows the newest page, merged with whatever arrived live in the meantime.
  async loadNewest() {
    const generation = this.generation;
    try {
      const page = await this.api.messages(this.id, { limit: PAGE });
      if (generation !== this.generation) return;
      this.addPage(page);
      this.scrollToBottom();
      this.onSeen();
    } catch (err) {
      if (generation === this.generation) this.showError(`Messages could not be loaded: ${err.message}`);
    }
  }

  // refresh merges the newest page into what is shown, after the socket had to start over. It
  // answers false when more happened meanwhile than a page holds: the caller then starts the
  // view again, rather than show history with a hole in it.
  async refresh() {
    const generation = this.generation;
    const page = await this.api.messages(this.id, { limit: PAGE });
    if (generation !== this.generation) return true;
    const oldest = Math.min(...page.messages.map((m) => m.seq));
    if (page.has_more && this.highestSeq && oldest > this.highestSeq) return false;
    if (this.oldestSeq) page.messages.forEach((m) => this.upsert(m));
    else this.addPage(page);
    this.onSeen();
    return true;
  }

  async loadOlder() {
    if (this.loadingOlder || !this.hasOlder) return;
    const generation = this.generation;
    this.loadingOlder = true;
    this.updateOlder();
    try {
      const page = await this.api.messages(this.id, { before: this.oldestSeq, limit: PAGE });
      if (generation !== this.generation) return;
      // Keep what the user is looking at in place while older messages go in above it.
      const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
      this.addPage(page);
      this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
      this.lastScrollTop = this.scroller.scrollTop;
    } catch (err) {
      if (generation === this.generation) this.showError(`Older messages could not be loaded: ${err.message}`);
    } finally {
      if (generation === this.generation) {
        this.loadingOlder = false;
        this.updateOlder();
      }
    }
  }

  addPage({ messages, has_more }) {
    messages.forEach((m) => this.upsert(m));
    if (messages.length) {
      const oldest = Math.min(...messages.map((m) => m.seq));
      this.oldestSeq = this.oldestSeq ? Math.min(this.oldestSeq, oldest) : oldest;
    }
    this.hasOlder = has_more && messages.length > 0;
    this.updateOlder();
  }

  updateOlder(loading = false) {
    const exhausted = !loading && !this.hasOlder;
    this.olderButton.hidden = exhausted;
    this.olderButton.disabled = loading || this.loadingOlder;
    this.olderButton.textContent = this.loadingOlder ? "Loading…" : "Load older messages";
    this.olderButton.dataset.exhausted = String(exhausted);
    this.historyStart.hidden = !exhausted || this.conv === null;
  }

  // upsert shows a message as chatd has it. The user's own unsent copy, if any, becomes it.
  upsert(message) {
    let entry = this.byId.get(message.id);
    if (!entry && message.sender_id === this.me.id) entry = this.byClient.get(message.client_msg_id);
    if (entry) {
      Object.assign(entry, newest(entry, message), { state: "sent", error: "" });
    } else {
      entry = { ...message, state: "sent", error: "" };
    }
    this.index(entry);
    this.highestSeq = Math.max(this.highestSeq, message.seq);
    this.show(entry);
  }

  // showPending shows one of the user's messages from the outbox: sending or failed.
  showPending(outboxEntry) {
    const known = this.byClient.get(outboxEntry.client_msg_id);
    if (known?.state === "sent") return;
    const { client_msg_id, sender_id, body, created_at, state, error } = outboxEntry;
    const entry = known ?? { id: "", seq: 0, client_msg_id, sender_id, body, created_at };
    Object.assign(entry, { state, error, outbox: outboxEntry });
    this.index(entry);
    this.show(entry, !known);
  }

  removePending(clientMsgId) {
    const entry = this.byClient.get(clientMsgId);
    if (!entry || entry.state === "sent") return;
    this.byClient.delete(clientMsgId);
    const i = this.order.indexOf(entry);
    this.order.splice(i, 1);
    entry.node.remove();
    this.group(i);
  }

  // patch applies an edit ({body, edited_at}) or a deletion ({body: "", deleted: true}).
  patch(messageId, patch) {
    const entry = this.byId.get(messageId);
    if (!entry) return;
    if (patch.deleted) entry.editing = false;
    Object.assign(entry, patch);
    this.render(entry);
  }

  index(entry) {
    if (entry.id) this.byId.set(entry.id, entry);
    if (entry.sender_id === this.me.id && entry.client_msg_id) this.byClient.set(entry.client_msg_id, entry);
    if (entry.localOrder === undefined) entry.localOrder = this.localOrder++;
  }

  // show renders an entry and puts it in its place, staying at the bottom if the user was
  // there (and going there for a message the user just wrote).
  show(entry, jump = false) {
    const stick = jump || this.atBottom();
    this.render(entry);
    this.place(entry);
    if (stick) this.scrollToBottom();
  }

  place(entry) {
    const at = this.order.indexOf(entry);
    if (at >= 0) this.order.splice(at, 1);
    let i = this.order.length;
    while (i > 0 && compare(this.order[i - 1], entry) > 0) i--;
    this.order.splice(i, 0, entry);
    const next = this.order[i + 1]?.node ?? null;
    if (entry.node.parentNode !== this.list || entry.node.nextSibling !== next) {
      this.list.insertBefore(entry.node, next);
    }
    this.group(i);
    this.group(i + 1);
  }

  // group marks a message that follows one by the same sender within a few minutes, so that
  // a run of messages shows the sender's name once, and a time only when the minute changes.
  group(i) {
    const entry = this.order[i];
    if (!entry) return;
    const prev = this.order[i - 1];
    const gap = prev ? Date.parse(entry.created_at) - Date.parse(prev.created_at) : Infinity;
    const continued = prev?.sender_id === entry.sender_id && gap < RUN;
    const minute = (e) => Math.floor(Date.parse(e.created_at) / 60_000);
    entry.node.classList.toggle("continued", continued);
    entry.node.classList.toggle("same-minute", continued && minute(prev) === minute(entry));
  }

  // render brings an entry's node up to date. The node keeps its parts and only those that
  // changed are touched: the log does not announce a message again when its state changes,
  // and keyboard focus stays where it was.
  render(entry) {
    const own = entry.sender_id === this.me.id;
    const parts = (entry.parts ??= this.build(entry, own));
    const node = entry.node;
    node.classList.add("message", own ? "own" : "other");
    node.classList.toggle("deleted", Boolean(entry.deleted));
    node.classList.toggle("editing", Boolean(entry.editing));
    node.dataset.messageId = entry.id ?? "";
    node.dataset.clientMsgId = entry.client_msg_id ?? "";
    node.dataset.seq = entry.seq ? String(entry.seq) : "";
    node.dataset.state = entry.state;
    node.dataset.senderId = entry.sender_id;
    if (entry.editing) return; // the editor stays as it is
    if (parts.meta.parentNode !== node) node.replaceChildren(...parts.skeleton); // editing ended

    const text = entry.deleted ? null : entry.body;
    if (parts.shown.text !== text) {
      parts.body.replaceChildren(entry.deleted ? "message deleted" : linkify(entry.body));
      parts.shown.text = text;
    }
    // .edited exists only on edited messages (the DOM contract says so, not just the looks).
    if (entry.edited_at && !entry.deleted) parts.body.after(parts.edited);
    else parts.edited.remove();
    setTime(parts.time, entry.created_at);

    const status = entry.state === "sending" ? "Sending…" : entry.state === "failed" ? entry.error : "";
    parts.status.textContent = status;
    parts.status.hidden = !status;
    parts.status.classList.toggle("error-text", entry.state === "failed");

    // Authors edit and delete their messages; a group's creator may delete anyone's.
    const canDelete = own || (this.conv?.kind === "group" && this.conv.creator_id === this.me.id);
    const actions = `${entry.state} ${entry.deleted} ${canDelete}`;
    if (parts.shown.actions !== actions) {
      const focused = ACTIONS.find((c) => document.activeElement?.classList.contains(c) && node.contains(document.activeElement));
      parts.actions.replaceChildren(...this.actionButtons(entry, own, canDelete));
      parts.actions.classList.toggle("failed-actions", entry.state === "failed");
      parts.shown.actions = actions;
      if (focused) parts.actions.querySelector(`.${focused}`)?.focus();
    }
  }

  // build makes an entry's node and the parts that render fills in.
  build(entry, own) {
    const parts = {
      body: h("div", { class: "body" }),
      edited: h("span", { class: "edited" }, "(edited)"),
      time: h("time", { class: "time" }),
      status: h("span", { class: "status" }),
      actions: h("span", { class: "actions" }),
      shown: {},
    };
    parts.meta = h("div", { class: "meta" }, parts.time, parts.status, parts.actions);
    parts.skeleton = [
      !own && this.conv?.kind === "group" ? h("div", { class: "sender" }, this.nameOf(entry.sender_id)) : null,
      h("div", { class: "bubble" }, parts.body),
      parts.meta,
    ].filter(Boolean);
    entry.node = h("div", { class: "message" }, parts.skeleton);
    return parts;
  }

  actionButtons(entry, own, canDelete) {
    const button = (cls, label, onclick, ariaLabel) => h("button", { type: "button", class: `link ${cls}`, "aria-label": ariaLabel, onclick }, label);
    if (entry.state === "failed") {
      return [button("retry", "Retry", () => this.retry(entry.outbox)), button("discard", "Discard", () => this.discard(entry.outbox))];
    }
    if (entry.state !== "sent" || entry.deleted) return [];
    return [
      own ? button("edit", "Edit", () => this.startEdit(entry), "Edit message") : null,
      canDelete ? button("delete", "Delete", (e) => this.remove(entry, e.currentTarget), "Delete message") : null,
    ].filter(Boolean);
  }

  startEdit(entry) {
    entry.editing = true;
    this.render(entry);
    const input = h("textarea", { class: "edit-input", "aria-label": "Edit message", rows: 2 });
    input.value = entry.body;
    const save = h("button", { type: "button", class: "btn small edit-save" }, "Save");
    const cancel = h("button", { type: "button", class: "btn small ghost edit-cancel" }, "Cancel");
    save.addEventListener("click", () => this.saveEdit(entry, input, save));
    cancel.addEventListener("click", () => this.endEdit(entry));
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.saveEdit(entry, input, save);
      } else if (e.key === "Escape") {
        e.preventDefault();
        e.stopPropagation();
        this.endEdit(entry);
      }
    });
    entry.node.replaceChildren(h("div", { class: "editor" }, input, h("div", { class: "editor-actions" }, cancel, save)));
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  async saveEdit(entry, input, save) {
    const body = input.value;
    if (body === entry.body) return this.endEdit(entry);
    if (body.trim() === "") return this.showError("A message cannot be empty. Delete it instead.");
    save.disabled = true;
    try {
      const message = await this.api.editMessage(entry.id, body);
      entry.editing = false;
      this.patch(entry.id, { body: message.body, edited_at: message.edited_at, deleted: message.deleted });
      this.onChanged(message);
      entry.node.querySelector(".edit")?.focus();
    } catch (err) {
      save.disabled = false;
      this.showError(`The message could not be edited: ${err.message}`);
    }
  }

  endEdit(entry) {
    entry.editing = false;
    this.render(entry);
    entry.node.querySelector(".edit")?.focus();
  }

  async remove(entry, button) {
    button.disabled = true;
    try {
      const message = await this.api.deleteMessage(entry.id);
      this.patch(entry.id, { body: "", deleted: true });
      this.onChanged(message);
    } catch (err) {
      if (entry.deleted) return; // deleted meanwhile (another tab): the pushed event showed it
      button.disabled = false;
      this.showError(`The message could not be deleted: ${err.message}`);
    }
  }
}

// compare orders sent messages by seq and puts unsent ones after them, oldest first.
function compare(a, b) {
  if (a.seq && b.seq) return a.seq - b.seq;
  if (a.seq || b.seq) return a.seq ? -1 : 1;
  return a.localOrder - b.localOrder;
}

// newest answers message, or the later state of it that entry already shows: an older copy (a
// page fetched before an edit, or the created event after a deletion) must not undo an edit or
// a deletion.
function newest(entry, message) {
  if (entry.deleted && !message.deleted) return { ...message, body: "", deleted: true, edited_at: entry.edited_at };
  if (entry.edited_at && (!message.edited_at || Date.parse(message.edited_at) < Date.parse(entry.edited_at))) {
    return { ...message, body: entry.body, edited_at: entry.edited_at };
  }
  return message;
}

// TypingIndicator shows "Bob is typing…" for a few seconds after each typing frame.
export class TypingIndicator {
  constructor(el, nameOf) {
    this.el = el;
    this.nameOf = nameOf;
    this.timers = new Map(); // user id -> timeout
  }

  show(userId) {
    clearTimeout(this.timers.get(userId));
    this.timers.set(userId, setTimeout(() => this.stop(userId), TYPING_SHOWN));
    this.render();
  }

  stop(userId) {
    clearTimeout(this.timers.get(userId));
    if (this.timers.delete(userId)) this.render();
  }

  clear() {
    this.timers.forEach(clearTimeout);
    this.timers.clear();
    this.render();
  }

  render() {
    const names = [...this.timers.keys()].map(this.nameOf);
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "Several people are typing…";
    this.el.textContent = text;
  }
}
