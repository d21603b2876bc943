/*
 * chatd embed script. A host site includes it with
 *
 *   <script src="https://chat.example/embed.js"></script>
 *
 * and mounts the chat into an element of its page:
 *
 *   const chat = ChatD.mount("#chat", {
 *     token,                                  // a user token minted by the host's server
 *     getToken: async () => fetchNewToken(),  // optional: called before the token expires
 *     onUnread: (count) => {},                // optional: total unread messages
 *   });
 *
 * The chat runs in an iframe on chatd's origin. The token never goes into a URL: it is handed to
 * the iframe with postMessage, addressed to chatd's origin only, and messages are accepted only
 * from that iframe and that origin.
 */
(function () {
  "use strict";

  // The origin this script was loaded from: the default chatd base URL.
  var scriptBase = document.currentScript ? new URL(".", document.currentScript.src).href.replace(/\/$/, "") : "";

  function resolveElement(target) {
    var el = typeof target === "string" ? document.querySelector(target) : target;
    if (!(el instanceof Element)) throw new Error("ChatD.mount: no element matches " + String(target));
    return el;
  }

  function call(fn, arg) {
    if (typeof fn !== "function") return;
    try {
      fn(arg);
    } catch (err) {
      console.error("ChatD callback failed:", err);
    }
  }

  // openTarget keeps only what chatd:open understands: {conversation} or {user}.
  function openTarget(options) {
    if (options && typeof options.conversation === "string") return { conversation: options.conversation };
    if (options && typeof options.user === "string") return { user: options.user };
    return undefined;
  }

  function mount(target, options) {
    options = options || {};
    var container = resolveElement(target);
    var baseUrl = String(options.baseUrl || scriptBase).replace(/\/+$/, "");
    if (!baseUrl) throw new Error("ChatD.mount: baseUrl is required");
    var chatOrigin = new URL(baseUrl).origin;
    var token = options.token || "";
    var pendingOpen = openTarget(options);
    var loaded = false;
    var refreshing = null;

    var iframe = document.createElement("iframe");
    iframe.src = baseUrl + "/embed/";
    iframe.title = options.title || "Chat";
    iframe.setAttribute("allow", "clipboard-write");
    iframe.setAttribute("referrerpolicy", "origin");
    iframe.style.width = "100%";
    iframe.style.height = "100%";
    iframe.style.border = "0";
    iframe.style.display = "block";

    function post(msg) {
      if (loaded && iframe.contentWindow) iframe.contentWindow.postMessage(msg, chatOrigin);
    }

    function setToken(next) {
      if (typeof next !== "string" || next === "") return;
      token = next;
      post({ type: "chatd:token", token: token });
    }

    // refresh asks the host's getToken for a new token, once at a time.
    function refresh() {
      if (typeof options.getToken !== "function" || refreshing) return;
      refreshing = Promise.resolve()
        .then(options.getToken)
        .then(setToken, function (err) {
          console.error("ChatD: getToken failed:", err);
        })
        .then(function () {
          refreshing = null;
        });
    }

    function init() {
      loaded = true;
      var msg = { type: "chatd:init", token: token };
      if (pendingOpen) msg.open = pendingOpen;
      pendingOpen = undefined;
      post(msg);
    }

    // Every load of the iframe is a fresh chat page that needs the token.
    iframe.addEventListener("load", function () {
      if (token || typeof options.getToken !== "function") return init();
      Promise.resolve()
        .then(options.getToken)
        .then(function (t) {
          token = t || "";
        })
        .catch(function (err) {
          console.error("ChatD: getToken failed:", err);
        })
        .then(init);
    });

    function onMessage(event) {
      if (event.origin !== chatOrigin || event.source !== iframe.contentWindow) return;
      var msg = event.data;
      if (!msg || typeof msg.type !== "string") return;
      switch (msg.type) {
        case "chatd:ready":
          call(options.onReady, { userId: msg.user_id });
          break;
        case "chatd:unread":
          call(options.onUnread, msg.count);
          break;
        case "chatd:token-expiring":
          call(options.onTokenExpiring, new Date(msg.expires_at));
          refresh();
          break;
        case "chatd:token-expired":
          refresh();
          break;
      }
    }

    window.addEventListener("message", onMessage);
    container.appendChild(iframe);

    return {
      iframe: iframe,
      setToken: setToken,
      open: function (what) {
        var target = openTarget(what);
        if (!target) throw new Error("ChatD open: pass {conversation: id} or {user: id}");
        if (loaded) post(Object.assign({ type: "chatd:open" }, target));
        else pendingOpen = target;
      },
      destroy: function () {
        window.removeEventListener("message", onMessage);
        iframe.remove();
      },
    };
  }

  window.ChatD = { mount: mount };
})();
