// The demo host page: signs the visitor in as the user picked (or ?user=…), mounts the chat
// with embed.js, shows the unread count in the navigation and renews the token when asked.
"use strict";

const chatUrl = document.body.dataset.chatUrl;
const params = new URLSearchParams(location.search);
const picker = document.getElementById("user-picker");
const badge = document.getElementById("chat-badge");
const sessionLine = document.getElementById("session");
const siteTitle = document.title;

const requested = params.get("user");
if (requested && ![...picker.options].some((o) => o.value === requested)) {
  picker.append(new Option(requested, requested));
}
if (requested) picker.value = requested;
const user = picker.value;

// Switching users reloads the page as that user, so nothing of the previous one stays around.
picker.addEventListener("change", () => {
  params.set("user", picker.value);
  location.search = params.toString();
});

const clock = (date) => date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

// fetchToken asks the demo server (which holds chatd's service key) for a token for the user.
async function fetchToken() {
  const res = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (!res.ok) throw new Error(`the demo server answered ${res.status}`);
  const { token, expires_at: expiresAt } = await res.json();
  sessionLine.textContent = `Signed in as ${user} until ${clock(new Date(expiresAt))}.`;
  return token;
}

function showUnread(count) {
  badge.textContent = count > 0 ? `Chat (${count})` : "Chat";
  badge.dataset.unread = String(count);
  document.title = count > 0 ? `(${count}) ${siteTitle}` : siteTitle;
}

async function start() {
  let token;
  try {
    token = await fetchToken();
  } catch (err) {
    sessionLine.textContent = `Could not sign in as ${user}: ${err.message}.`;
    return;
  }
  // Exposed for trying things from the console (demoChat.open({user: "bob"})).
  window.demoChat = ChatD.mount("#chat-frame", {
    baseUrl: chatUrl,
    token,
    getToken: fetchToken,
    conversation: params.get("conversation") ?? undefined,
    user: params.get("with") ?? undefined,
    title: "Club chat",
    onUnread: showUnread,
    onTokenExpiring: (expiresAt) => {
      sessionLine.textContent = `Your session ends at ${clock(expiresAt)}; renewing it…`;
    },
  });
}

start();
