// chatd's embedded chat client: the page inside the host site's iframe. It gets its token from
// the host over postMessage, loads state over REST, keeps it current from the WebSocket, and
// tells the host about unread messages and the token's expiry.

import { Api } from "./api.js";
import { $, h, avatar, debounce } from "./dom.js";
import { HostBridge, Session, hostOrigins } from "./host.js";
import { Socket } from "./socket.js";
import { Outbox } from "./outbox.js";
import { ConversationList } from "./conversations.js";
import { MessageView, TypingIndicator } from "./messages.js";
import { MembersPanel } from "./members.js";
import { Dialogs } from "./dialogs.js";

const TYPING_EVERY = 3_000; // send a typing frame at most this often
const READ_DELAY = 500; // wait this long before moving the read marker
const READY_FALLBACK = 3_000; // show REST state if the socket is not ready by then
const CONVERSATION_PAGES = 20; // pages of 100 loaded for the list (and the unread total)
const ERROR_SHOWN = 8_000;
const PROBE_AFTER = 3; // failed socket attempts before checking the token over REST
const PROBE_EVERY = 30_000;
const wide = matchMedia("(min-width: 800px)"); // room for the members panel beside the messages

const STATE_LABELS = {
  connecting: "Connecting…",
  online: "Online",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  "waiting-token": "Signing in again…",
};

// showError shows a message in the #error toast for a few seconds. Inside an open modal dialog
// the toast moves into it, so that it is not hidden behind the dialog's backdrop.
let errorTimer;
function showError(message) {
  const el = $("error");
  const host = document.querySelector("dialog[open]") ?? document.body;
  if (el.parentElement !== host) host.append(el);
  el.textContent = message;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => (el.textContent = ""), ERROR_SHOWN);
}

// notice replaces the app with an explanation, for states a person has to act on.
function notice(title, text) {
  $("notice").replaceChildren(h("h1", {}, title), h("p", {}, text));
  $("notice").hidden = false;
  $("app").hidden = true;
}

function messageFromFrame(f) {
  return {
    id: f.data.message_id,
    conversation_id: f.conversation_id,
    seq: f.seq,
    sender_id: f.data.sender_id,
    client_msg_id: f.data.client_msg_id,
    body: f.data.body,
    created_at: f.time,
    deleted: false,
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ChatApp {
  constructor(origins) {
    this.me = null;
    this.people = new Map(); // user id -> display name
    this.presence = new Map(); // user id -> online
    this.drafts = new Map(); // conversation id -> unsent text in the composer
    this.started = false; // chatd:init received
    this.pendingOpen = null; // what the host asked to open before the app was ready
    this.lastUnread = null; // the total last told to the host
    this.held = null; // event frames held back while a reload runs
    this.reloading = null;
    this.reloadAgain = false;
    this.stale = false; // an event could not be applied: reload at the next chance
    this.lastTypingSent = 0;
    this.lastProbe = 0;
    this.nameOf = (id) => this.people.get(id) ?? id;

    this.bridge = new HostBridge(origins, {
      onMessage: (msg) => this.hostMessage(msg),
      onRefused: (origin) => notice("This chat is not configured for this site.", `${origin} is not allowed to embed it.`),
    });
    this.session = new Session((msg) => this.bridge.post(msg));
    this.session.onWaiting = () => this.showConnection();
    this.api = new Api(this.session);
    this.socket = new Socket(this.session, {
      onFrame: (frame) => this.frame(frame),
      onReady: (info) => this.ready(info),
      onState: (state) => this.connectionChanged(state),
    });
    this.outbox = new Outbox({
      send: (entry) => this.api.sendMessage(entry.conversation_id, entry.client_msg_id, entry.body),
      onChange: (entry, message) => this.outboxChanged(entry, message),
    });
    this.markReadSoon = debounce(() => this.markRead(), READ_DELAY);

    window.chatdDebug = Object.freeze({
      state: () => ({
        connection: $("connection-state").dataset.state,
        lastSeq: this.socket.lastSeq,
        epoch: this.socket.epoch,
        outbox: this.outbox.size,
        openConversation: this.view?.id ?? null,
      }),
    });
    $("reconnect-now").addEventListener("click", () => this.socket.reconnectNow());
    $("error").addEventListener("click", () => ($("error").textContent = ""));
    for (const dialog of document.querySelectorAll("dialog")) {
      dialog.addEventListener("close", () => $("app").append($("error")));
    }
    this.showConnection();
  }

  // --- the host page ---

  hostMessage(msg) {
    switch (msg.type) {
      case "chatd:init":
        this.session.set(msg.token);
        this.requestOpen(msg.open);
        if (!this.started) {
          this.started = true;
          this.boot();
        }
        return;
      case "chatd:token":
        return this.session.set(msg.token);
      case "chatd:open":
        return this.requestOpen(msg);
    }
  }

  requestOpen(target) {
    if (!target || (typeof target.conversation !== "string" && typeof target.user !== "string")) return;
    if (this.view) this.openTarget(target);
    else this.pendingOpen = target;
  }

  openTarget({ conversation, user }) {
    if (typeof conversation === "string") return this.openConversation(conversation);
    this.startDirect(user).catch((err) => showError(`The chat with ${user} could not be opened: ${err.message}`));
  }

  postUnread() {
    const count = this.list.totalUnread();
    if (count === this.lastUnread) return;
    this.lastUnread = count;
    this.bridge.post({ type: "chatd:unread", count });
  }

  // --- start-up ---

  async boot() {
    if (!this.session.token) await this.session.renew("");
    this.me = await this.loadMe();
    if (!this.me) return;
    this.people.set(this.me.id, this.me.display_name);
    $("me").dataset.userId = this.me.id;
    $("me").textContent = this.me.display_name;
    $("me-avatar").replaceWith(avatar(this.me.id, this.me.display_name));
    this.bridge.post({ type: "chatd:ready", user_id: this.me.id });
    this.build();
    this.socket.start();
    this.fallback = setTimeout(() => this.reload(), READY_FALLBACK);
    if (this.pendingOpen) this.openTarget(this.pendingOpen);
    this.pendingOpen = null;
  }

  async loadMe() {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.api.me();
      } catch (err) {
        if (err.status === 404) {
          notice("Your chat account is not set up yet.", "This site has not created your chat user. Please try again later.");
          return null;
        }
        if (!err.retryable) {
          notice("The chat could not start.", err.message);
          return null;
        }
        showError(`${err.message} Trying again…`);
        await sleep(Math.min(15_000, 1_000 * 2 ** attempt));
      }
    }
  }

  // build creates the parts that need to know who the user is.
  build() {
    this.list = new ConversationList($("conversation-list"), $("conversation-empty"), {
      me: this.me,
      nameOf: this.nameOf,
      onOpen: (id) => this.openConversation(id, { focus: true }),
    });
    this.view = new MessageView({
      api: this.api,
      me: this.me,
      nameOf: this.nameOf,
      showError,
      onSeen: () => this.markReadSoon(),
      onChanged: (m) => this.list.patchMessage(m.conversation_id, m.id, { body: m.body, edited_at: m.edited_at, deleted: m.deleted }),
      retry: (entry) => this.outbox.attempt(entry),
      discard: (entry) => {
        this.outbox.discard(entry);
        this.view.removePending(entry.client_msg_id);
      },
    });
    this.typing = new TypingIndicator($("typing"), this.nameOf);
    this.members = new MembersPanel({
      api: this.api,
      me: this.me,
      presence: this.presence,
      showError,
      onChanged: (id, seq) => this.refreshConversation(id, seq),
      onLeft: (id) => this.leftConversation(id),
    });
    new Dialogs({
      api: this.api,
      me: this.me,
      showError,
      onUsers: (users) => users.forEach((u) => this.people.set(u.id, u.display_name)),
      startDirect: (userId) => this.startDirect(userId),
      createGroup: (title, members) => this.createGroup(title, members),
    });
    this.setUpComposer();
    this.setUpLayout();
    document.addEventListener("visibilitychange", () => this.markReadSoon());
  }

  // --- the socket ---

  ready({ fresh, resynced }) {
    clearTimeout(this.fallback);
    this.presence.set(this.me.id, true);
    // Presence is not replayed: ask again for the open conversation.
    if (this.view.id) this.loadPresence(this.view.id);
    if (fresh || this.stale) this.reload({ resynced });
    this.outbox.flush();
    this.markReadSoon();
  }

  connectionChanged(state) {
    this.showConnection();
    if (state === "online" || !this.view) return;
    if (state === "reconnecting") this.probeToken();
    // Without the socket, presence is unknown: show no one online rather than stale dots.
    this.presence.clear();
    this.members.updatePresence();
    if (this.view.id) this.renderSubtitle(this.list.get(this.view.id));
  }

  frame(f) {
    switch (f.type) {
      case "typing":
        if (f.conversation_id === this.view.id && f.data.user_id !== this.me.id) this.typing.show(f.data.user_id);
        return;
      case "presence":
        this.presence.set(f.data.user_id, f.data.online);
        this.members.updatePresence();
        if (this.view.id) this.renderSubtitle(this.list.get(this.view.id));
        return;
    }
    if (this.held) this.held.push(f);
    else this.apply(f);
  }

  apply(f) {
    switch (f.type) {
      case "message.created":
        return this.messageCreated(messageFromFrame(f));
      case "message.edited":
        return this.messageChanged(f.conversation_id, f.data.message_id, { body: f.data.body, edited_at: f.time });
      case "message.deleted":
        return this.messageChanged(f.conversation_id, f.data.message_id, { body: "", deleted: true });
      case "read.updated":
        return this.readUpdated(f.conversation_id, f.data.seq);
      case "conversation.created":
      case "member.joined":
      case "member.left":
        return this.membershipChanged(f);
    }
  }

  // reload loads the conversation list (all pages) and the open conversation again over REST.
  // Event frames that arrive meanwhile are held back and applied after it, in order; applying
  // one that the reload already reflects changes nothing.
  reload({ resynced = false } = {}) {
    if (this.reloading) {
      this.reloadAgain = true;
      return;
    }
    this.held = [];
    this.stale = false;
    this.reloading = this.loadAll(resynced).finally(() => {
      const held = this.held;
      this.held = null;
      this.reloading = null;
      held.forEach((f) => this.apply(f));
      this.postUnread();
      if (this.reloadAgain) {
        this.reloadAgain = false;
        this.reload();
      }
    });
  }

  async loadAll(resynced) {
    try {
      const views = [];
      let before;
      for (let page = 0; page < CONVERSATION_PAGES; page++) {
        const { conversations, has_more } = await this.api.conversations({ before, limit: 100 });
        views.push(...conversations);
        if (!has_more || conversations.length === 0) break;
        before = conversations.at(-1).last_activity_seq;
      }
      views.forEach((v) => this.learnNames(v.members));
      this.list.replaceAll(views);
      let open = this.view.id && this.list.get(this.view.id);
      // The list may have been read before the open conversation was there: one created and
      // opened while it loaded. Ask for that one; refreshConversation closes it if it is gone.
      if (this.view.id && !open) open = await this.refreshConversation(this.view.id);
      if (open) await this.reloadOpen(open, resynced);
    } catch (err) {
      this.stale = true;
      showError(`The conversations could not be loaded: ${err.message}`);
    }
  }

  async reloadOpen(conv, resynced) {
    this.updateOpen(conv);
    // After resync_required the messages shown belong to another stream: start over.
    if (resynced || !(await this.view.refresh())) this.startView(conv);
  }

  // probeToken: a WebSocket refused for its token fails like a network error (the browser
  // does not show the 401), so after a few failed attempts a REST call checks the token; a 401
  // there asks the host for a new one, which the next attempt uses.
  probeToken() {
    if (this.socket.attempt < PROBE_AFTER || Date.now() - this.lastProbe < PROBE_EVERY) return;
    this.lastProbe = Date.now();
    this.api.me().catch(() => {});
  }

  // --- events ---

  messageCreated(message) {
    if (message.sender_id === this.me.id) this.outbox.settle(message);
    if (!this.list.applyMessage(message)) this.refreshConversation(message.conversation_id);
    if (this.view.id === message.conversation_id) {
      this.view.upsert(message);
      this.typing.stop(message.sender_id);
      this.markReadSoon();
    }
    this.postUnread();
  }

  messageChanged(conversationId, messageId, patch) {
    this.list.patchMessage(conversationId, messageId, patch);
    if (this.view.id === conversationId) this.view.patch(messageId, patch);
    // A deleted message no longer counts as unread; only chatd knows whether it did.
    if (patch.deleted && this.list.get(conversationId)?.unread_count > 0) this.refreshConversation(conversationId);
  }

  readUpdated(conversationId, seq) {
    if (!this.list.markRead(conversationId, seq)) this.refreshConversation(conversationId);
    this.postUnread();
  }

  membershipChanged(f) {
    if (f.type === "member.left" && f.data.user_id === this.me.id) {
      const removed = f.actor !== this.me.id;
      return this.leftConversation(f.conversation_id, removed ? "You were removed from the group." : null);
    }
    this.list.activity(f.conversation_id, f.seq, f.time);
    this.refreshConversation(f.conversation_id);
  }

  // refreshConversation reads one conversation again (names, members, unread count), with
  // minSeq when it must reflect a write of ours. It answers the view, or nothing.
  async refreshConversation(id, minSeq) {
    try {
      const conv = await this.api.conversation(id, minSeq);
      this.learnNames(conv.members);
      this.list.upsert(conv);
      if (this.view.id === id) this.updateOpen(this.list.get(id));
      this.postUnread();
      return this.list.get(id);
    } catch (err) {
      if (err.status === 404) return this.leftConversation(id, "This conversation is no longer available.");
      this.stale = true; // the next ready reloads; until then try once more in a while
      setTimeout(() => this.stale && this.socket.state === "online" && this.reload(), 5_000);
    }
  }

  leftConversation(id, message) {
    this.list.remove(id);
    if (this.view.id === id) this.closeConversation(message);
    this.postUnread();
  }

  learnNames(members) {
    for (const m of members) this.people.set(m.user_id, m.display_name);
  }

  // --- the user's actions ---

  async openConversation(id, { focus = false } = {}) {
    const conv = this.list.get(id) ?? (await this.refreshConversation(id));
    if (!conv) return showError("That conversation was not found.");
    this.showConversation(conv, { focus });
  }

  async startDirect(userId) {
    const { data, seq } = await this.api.createDirect(userId);
    await this.openCreated(data.id, seq);
  }

  async createGroup(title, members) {
    const { data, seq } = await this.api.createGroup(title, members);
    await this.openCreated(data.id, seq);
  }

  // openCreated opens a conversation just created or asked for: min_seq makes the read see it.
  async openCreated(id, seq) {
    const conv = await this.api.conversation(id, seq);
    this.learnNames(conv.members);
    this.list.upsert(conv);
    this.showConversation(this.list.get(id), { focus: true });
    this.postUnread();
  }

  send() {
    const input = $("message-input");
    const body = input.value.trim();
    if (!body || !this.view.id) return;
    input.value = "";
    this.autosize();
    this.drafts.delete(this.view.id);
    this.outbox.add(this.view.id, this.me.id, body);
  }

  outboxChanged(entry, message) {
    if (message) {
      if (!this.list.applyMessage(message)) this.refreshConversation(message.conversation_id);
      if (this.view.id === message.conversation_id) this.view.upsert(message);
      this.postUnread();
      return;
    }
    if (this.view.id === entry.conversation_id) this.view.showPending(entry);
    if (entry.state === "failed" && !entry.auto) showError(`Your message was not sent: ${entry.error}`);
  }

  // markRead moves the read marker to the newest message shown, when the user can see it: the
  // conversation is open, the frame visible and the view scrolled to the bottom.
  async markRead() {
    const id = this.view.id;
    const conv = id && this.list.get(id);
    const seq = this.view.highestSeq;
    if (!conv || !seq || !this.conversationVisible() || !this.view.atBottom()) return;
    if (seq <= conv.last_read_seq && conv.unread_count === 0) return;
    try {
      await this.api.markRead(id, seq);
      this.readUpdated(id, seq);
    } catch {
      // Not worth a message: the marker moves the next time the conversation is seen.
    }
  }

  conversationVisible() {
    return document.visibilityState === "visible" && $("message-scroller").clientHeight > 0;
  }

  // --- the open conversation ---

  // showConversation opens conv in the right pane (and brings that pane forward on narrow
  // frames). The conversation already open is not loaded again.
  showConversation(conv, { focus = false } = {}) {
    if (this.view.id !== conv.id) this.startView(conv);
    this.updateOpen(conv);
    $("app").dataset.view = "conversation";
    if (focus) $("message-input").focus();
  }

  // startView loads conv into the message view from scratch.
  startView(conv) {
    const input = $("message-input");
    if (this.view.id) this.drafts.set(this.view.id, input.value);
    this.view.open(conv);
    this.typing.clear();
    $("conversation").dataset.conversationId = conv.id;
    $("conversation").hidden = false;
    $("placeholder").hidden = true;
    input.value = this.drafts.get(conv.id) ?? "";
    this.autosize();
    this.outbox.forConversation(conv.id).forEach((entry) => this.view.showPending(entry));
    this.view.loadNewest();
    this.loadPresence(conv.id);
  }

  // updateOpen shows a newer view of the open conversation: title, members, creator.
  updateOpen(conv) {
    this.view.setConversation(conv);
    this.list.setActive(conv.id);
    $("conversation-title").textContent = this.list.title(conv);
    this.renderSubtitle(conv);
    this.members.render(conv);
  }

  renderSubtitle(conv) {
    if (!conv) return;
    const subtitle = $("conversation-subtitle");
    if (conv.kind === "group") {
      subtitle.textContent = `${conv.members.length} ${conv.members.length === 1 ? "member" : "members"}`;
      delete subtitle.dataset.online;
      return;
    }
    const other = conv.members.find((m) => m.user_id !== this.me.id);
    const online = this.presence.get(other?.user_id) === true;
    subtitle.textContent = online ? "Online" : "Offline";
    subtitle.dataset.online = String(online);
  }

  closeConversation(message) {
    this.view.close();
    this.typing.clear();
    this.list.setActive(null);
    $("conversation").hidden = true;
    $("conversation").dataset.conversationId = "";
    $("placeholder").hidden = false;
    $("app").dataset.view = "list";
    if (message) showError(message);
  }

  async loadPresence(id) {
    try {
      const { online } = await this.api.presence(id);
      const conv = this.list.get(id);
      if (this.view.id !== id || !conv) return;
      const set = new Set(online);
      for (const m of conv.members) this.presence.set(m.user_id, set.has(m.user_id));
      this.members.updatePresence();
      this.renderSubtitle(conv);
    } catch {
      // Presence is a nicety: without it the dots stay as they are.
    }
  }

  setUpComposer() {
    const input = $("message-input");
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      }
    });
    input.addEventListener("input", () => {
      this.autosize();
      const now = Date.now();
      if (input.value.trim() && this.view.id && now - this.lastTypingSent >= TYPING_EVERY) {
        if (this.socket.send({ type: "typing", conversation_id: this.view.id })) this.lastTypingSent = now;
      }
    });
  }

  autosize() {
    const input = $("message-input");
    input.style.height = "auto";
    const border = input.offsetHeight - input.clientHeight;
    input.style.height = `${Math.min(input.scrollHeight + border, 160)}px`;
  }

  // setUpLayout: on narrow frames one pane at a time, with a back button; the members panel sits
  // beside the messages on wide frames and over them otherwise.
  setUpLayout() {
    const app = $("app");
    const toggle = $("members-toggle");
    const setMembers = (open) => {
      app.dataset.members = open ? "open" : "closed";
      toggle.setAttribute("aria-expanded", String(open));
    };
    setMembers(wide.matches);
    wide.addEventListener("change", () => setMembers(wide.matches));
    toggle.addEventListener("click", () => setMembers(app.dataset.members !== "open"));
    $("members-panel").addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !wide.matches) {
        setMembers(false);
        toggle.focus();
      }
    });
    $("back").addEventListener("click", () => {
      app.dataset.view = "list";
      this.list.items.get(this.view.id)?.node.firstElementChild.focus();
    });
  }

  // showConnection shows the connection state, and while a reconnect waits, a countdown to
  // it. The countdown is outside the status live region, so it is not read out every second.
  showConnection() {
    const state = this.session.waiting ? "waiting-token" : this.socket.state;
    const el = $("connection-state");
    el.dataset.state = state;
    const wait = Math.ceil((this.socket.retryAt - Date.now()) / 1000);
    const counting = state === "reconnecting" && wait > 0;
    el.querySelector(".label").textContent = counting ? "Reconnecting" : STATE_LABELS[state];
    $("reconnect-countdown").textContent = counting ? `in ${wait} s` : "";
    $("reconnect-now").hidden = state !== "reconnecting";
    clearTimeout(this.countdown);
    if (counting) this.countdown = setTimeout(() => this.showConnection(), 1000);
  }
}

function main() {
  if (window.parent === window) {
    return notice(
      "This chat is meant to be embedded.",
      "Open it from a site that includes chatd's embed.js; on its own, this page cannot sign you in.",
    );
  }
  const origins = hostOrigins();
  if (origins.length === 0) {
    return notice("This chat is not configured for this site.", "No host site is allowed to embed it.");
  }
  new ChatApp(origins);
}

main();
