// The conversation list: ConversationViews from REST, kept current by pushed events, most
// recent activity first.

import { h, avatar, timeElement } from "./dom.js";

export class ConversationList {
  constructor(root, emptyNote, { me, nameOf, onOpen }) {
    this.root = root;
    this.emptyNote = emptyNote;
    this.me = me;
    this.nameOf = nameOf;
    this.onOpen = onOpen;
    this.items = new Map(); // conversation id -> { conv, node }
    this.active = null;
  }

  get(id) {
    return this.items.get(id)?.conv;
  }

  totalUnread() {
    let total = 0;
    for (const { conv } of this.items.values()) total += conv.unread_count;
    return total;
  }

  replaceAll(views) {
    const keep = new Set(views.map((v) => v.id));
    for (const id of this.items.keys()) if (!keep.has(id)) this.remove(id);
    views.forEach((view) => this.upsert(view));
    this.emptyNote.hidden = this.items.size > 0;
  }

  // upsert takes a ConversationView read over REST. The read was made after the events this
  // client has applied, so it wins, unless events newer than the read have been applied since.
  upsert(view) {
    const item = this.items.get(view.id);
    if (!item) {
      const node = h("li", { "data-id": view.id });
      this.items.set(view.id, { conv: view, node });
    } else if (item.conv.last_activity_seq > view.last_activity_seq) {
      const { last_activity_seq, last_activity_at, last_message, last_read_seq, unread_count } = item.conv;
      item.conv = { ...view, last_activity_seq, last_activity_at, last_message, last_read_seq, unread_count };
    } else {
      item.conv = view;
    }
    this.refresh(view.id);
  }

  remove(id) {
    this.items.get(id)?.node.remove();
    this.items.delete(id);
    this.emptyNote.hidden = this.items.size > 0;
  }

  // applyMessage applies a new message (pushed, or the answer to our own POST). It answers false
  // when the conversation is unknown, so the caller can fetch it.
  applyMessage(message) {
    const conv = this.get(message.conversation_id);
    if (!conv) return false;
    if (message.seq <= conv.last_activity_seq) return true; // already reflected
    conv.last_activity_seq = message.seq;
    conv.last_activity_at = message.created_at;
    conv.last_message = message;
    if (message.sender_id === this.me.id) conv.last_read_seq = message.seq;
    else conv.unread_count++;
    this.refresh(conv.id);
    return true;
  }

  // activity moves a conversation up for a membership event (seq and time from the frame).
  activity(id, seq, time) {
    const conv = this.get(id);
    if (!conv || seq <= conv.last_activity_seq) return;
    conv.last_activity_seq = seq;
    conv.last_activity_at = time;
    this.refresh(id);
  }

  patchMessage(conversationId, messageId, patch) {
    const conv = this.get(conversationId);
    if (conv?.last_message?.id !== messageId) return;
    conv.last_message = { ...conv.last_message, ...patch };
    this.refresh(conversationId);
  }

  // markRead moves the read marker as chatd does: never back, never past the latest activity.
  // Read up to the last message means nothing is unread; otherwise the count cannot be worked
  // out here, and markRead answers false so that the caller reads the conversation again.
  markRead(id, seq) {
    const conv = this.get(id);
    if (!conv) return true;
    conv.last_read_seq = Math.max(conv.last_read_seq, Math.min(seq, conv.last_activity_seq));
    if (!conv.last_message || conv.last_read_seq >= conv.last_message.seq) conv.unread_count = 0;
    this.refresh(id);
    return conv.unread_count === 0;
  }

  setActive(id) {
    this.active = id;
    for (const [itemId, item] of this.items) {
      const button = item.node.firstElementChild;
      if (itemId === id) button?.setAttribute("aria-current", "true");
      else button?.removeAttribute("aria-current");
    }
  }

  title(conv) {
    if (conv.kind === "group") return conv.title;
    const other = conv.members.find((m) => m.user_id !== this.me.id);
    return other?.display_name ?? "Direct chat";
  }

  refresh(id) {
    const item = this.items.get(id);
    const focused = item.node.contains(document.activeElement);
    item.node.replaceChildren(this.button(item.conv));
    this.position(item);
    if (focused) item.node.firstElementChild.focus();
    this.emptyNote.hidden = true;
  }

  // position keeps the list ordered by last_activity_seq, newest first.
  position(item) {
    const seq = item.conv.last_activity_seq;
    let next = null;
    for (const node of this.root.children) {
      if (node !== item.node && this.items.get(node.dataset.id).conv.last_activity_seq < seq) {
        next = node;
        break;
      }
    }
    if (item.node.parentNode !== this.root || item.node.nextElementSibling !== next) {
      this.root.insertBefore(item.node, next);
    }
  }

  button(conv) {
    const title = this.title(conv);
    const avatarId = conv.kind === "group" ? conv.id : (conv.members.find((m) => m.user_id !== this.me.id)?.user_id ?? conv.id);
    const unread = conv.unread_count > 0;
    return h(
      "button",
      {
        type: "button",
        class: unread ? "conversation-item has-unread" : "conversation-item",
        "data-conversation-id": conv.id,
        "aria-current": conv.id === this.active ? "true" : null,
        onclick: () => this.onOpen(conv.id),
      },
      avatar(avatarId, title),
      h(
        "span",
        { class: "summary" },
        h("span", { class: "title" }, title),
        h("span", { class: conv.last_message?.deleted ? "preview tombstone" : "preview" }, this.preview(conv)),
      ),
      h(
        "span",
        { class: "side" },
        conv.last_activity_at ? timeElement(conv.last_activity_at, "when") : null,
        unread ? [h("span", { class: "unread" }, String(conv.unread_count)), h("span", { class: "visually-hidden" }, " unread")] : null,
      ),
    );
  }

  preview(conv) {
    const m = conv.last_message;
    if (!m) return conv.kind === "group" ? "Group created" : "No messages yet";
    if (m.deleted) return "message deleted";
    const text = m.body.replace(/\s+/g, " ").trim();
    if (m.sender_id === this.me.id) return `You: ${text}`;
    if (conv.kind === "group") return `${this.nameOf(m.sender_id)}: ${text}`;
    return text;
  }
}
