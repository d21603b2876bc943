// The REST client. The chat page is served by chatd at <base>/embed/, so the API is at
// <base>/api/v1/, same origin: no CORS involved, even behind a proxy that adds a path prefix.

const API = new URL("../api/v1/", location.href);

// ApiError carries chatd's error shape: {"error":{"code","message"}}. A network failure is
// status 0, code "network".
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  // retryable: the same request may succeed later (network, chatd or a dependency down, or a
  // conflict chatd asks to retry). Everything else is a refusal that will not change.
  get retryable() {
    return this.status === 0 || this.status === 409 || this.status === 429 || this.status >= 500;
  }
}

const seg = encodeURIComponent;

export class Api {
  constructor(session) {
    this.session = session;
  }

  // request answers {data, seq}: the JSON body and the X-Chat-Seq header (0 when absent).
  // A 401 asks the host for a new token and retries once with it.
  async request(method, path, { query, body } = {}, retried = false) {
    const url = new URL(path, API);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
    }
    const token = this.session.token;
    let res;
    try {
      res = await fetch(url, {
        method,
        headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
        cache: "no-store",
        credentials: "omit",
      });
    } catch {
      throw new ApiError(0, "network", "The chat server cannot be reached.");
    }
    if (res.status === 401 && !retried) {
      await this.session.renew(token);
      return this.request(method, path, { query, body }, true);
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const error = data?.error ?? {};
      throw new ApiError(res.status, error.code ?? "http", error.message ?? `The chat server answered ${res.status}.`);
    }
    return { data, seq: Number(res.headers.get("X-Chat-Seq")) || 0 };
  }

  async get(path, query) {
    return (await this.request("GET", path, { query })).data;
  }

  me() {
    return this.get("me");
  }

  users({ q, cursor, limit = 20 } = {}) {
    return this.get("users", { q, cursor, limit });
  }

  conversations({ before, limit = 100 } = {}) {
    return this.get("conversations", { before, limit });
  }

  conversation(id, minSeq) {
    return this.get(`conversations/${seg(id)}`, { min_seq: minSeq });
  }

  // The writes below answer {data, seq}: seq is the min_seq that reads the change back.
  createDirect(userId) {
    return this.request("POST", "conversations", { body: { kind: "direct", members: [userId] } });
  }

  createGroup(title, members) {
    return this.request("POST", "conversations", { body: { kind: "group", title, members } });
  }

  addMember(conversationId, userId) {
    return this.request("POST", `conversations/${seg(conversationId)}/members`, { body: { user_id: userId } });
  }

  removeMember(conversationId, userId) {
    return this.request("DELETE", `conversations/${seg(conversationId)}/members/${seg(userId)}`);
  }

  messages(conversationId, { before, limit = 15 } = {}) {
    return this.get(`conversations/${seg(conversationId)}/messages`, { before, limit });
  }

  async sendMessage(conversationId, clientMsgId, body) {
    const path = `conversations/${seg(conversationId)}/messages`;
    return (await this.request("POST", path, { body: { client_msg_id: clientMsgId, body } })).data;
  }

  async editMessage(messageId, body) {
    return (await this.request("PATCH", `messages/${seg(messageId)}`, { body: { body } })).data;
  }

  async deleteMessage(messageId) {
    return (await this.request("DELETE", `messages/${seg(messageId)}`)).data;
  }

  markRead(conversationId, seq) {
    return this.request("POST", `conversations/${seg(conversationId)}/read`, { body: { seq } });
  }

  presence(conversationId) {
    return this.get(`conversations/${seg(conversationId)}/presence`);
  }
}

// wsURL is the WebSocket endpoint next to the REST API.
export function wsURL() {
  const url = new URL("ws", API);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url;
}
