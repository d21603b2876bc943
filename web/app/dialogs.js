// The "New chat" and "New group" dialogs, both built on a searchable, paged user directory.

import { $, h, avatar, debounce } from "./dom.js";

// Directory fills a list from GET /api/v1/users: a search box, pages joined by a "More" button.
class Directory {
  constructor({ api, me, search, results, more, empty, item, onUsers, showError }) {
    Object.assign(this, { api, me, search, results, more, empty, item, onUsers, showError });
    this.cursor = "";
    this.request = 0; // answers to older requests are dropped
    search.addEventListener("input", debounce(() => this.load(true), 250));
    more.addEventListener("click", () => this.load(false));
  }

  reset() {
    this.search.value = "";
    this.results.replaceChildren();
    this.load(true);
  }

  async load(fresh) {
    const request = ++this.request;
    this.more.disabled = true;
    try {
      const q = this.search.value.trim();
      const page = await this.api.users({ q, cursor: fresh ? "" : this.cursor, limit: 20 });
      if (request !== this.request) return;
      this.onUsers(page.users);
      const users = page.users.filter((u) => u.id !== this.me.id);
      if (fresh) this.results.replaceChildren();
      this.results.append(...users.map((u) => h("li", {}, this.item(u))));
      this.cursor = page.next_cursor;
      this.more.hidden = !page.next_cursor;
      this.empty.hidden = this.results.childElementCount > 0;
    } catch (err) {
      if (request === this.request) this.showError(`The directory could not be loaded: ${err.message}`);
    } finally {
      if (request === this.request) this.more.disabled = false;
    }
  }
}

function person(user) {
  return [
    avatar(user.id, user.display_name),
    h("span", { class: "person-name" }, user.display_name),
    h("span", { class: "person-id" }, user.id),
  ];
}

// setUpDialog wires a modal dialog's close buttons and closes it on a click on the backdrop
// around it; Escape closes it too (the browser does that).
function setUpDialog(dialog) {
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) dialog.close();
  });
  for (const button of dialog.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => dialog.close());
  }
}

export class Dialogs {
  // deps: api, me, showError(message), onUsers(users) to learn display names,
  // startDirect(userId) and createGroup(title, memberIds), both async.
  constructor(deps) {
    Object.assign(this, deps);
    this.setUpDirect();
    this.setUpGroup();
  }

  setUpDirect() {
    const dialog = $("directory-dialog");
    setUpDialog(dialog);
    const directory = new Directory({
      api: this.api,
      me: this.me,
      search: $("directory-search"),
      results: $("directory-results"),
      more: $("directory-more"),
      empty: $("directory-empty"),
      onUsers: this.onUsers,
      showError: this.showError,
      item: (user) =>
        h("button", { type: "button", class: "person", "data-user-id": user.id, onclick: (e) => this.pickDirect(dialog, user, e.currentTarget) }, person(user)),
    });
    $("new-direct").addEventListener("click", () => {
      dialog.showModal();
      $("directory-search").focus();
      directory.reset();
    });
  }

  async pickDirect(dialog, user, button) {
    button.disabled = true;
    try {
      await this.startDirect(user.id);
      dialog.close();
    } catch (err) {
      this.showError(`The chat with ${user.display_name} could not be started: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  setUpGroup() {
    const dialog = $("group-dialog");
    setUpDialog(dialog);
    const selected = new Set();
    const count = $("group-selected");
    const showCount = () => {
      count.textContent = selected.size === 1 ? "1 person selected" : `${selected.size} people selected`;
    };
    const directory = new Directory({
      api: this.api,
      me: this.me,
      search: $("group-search"),
      results: $("group-members"),
      more: $("group-more"),
      empty: $("group-empty"),
      onUsers: this.onUsers,
      showError: this.showError,
      item: (user) => {
        const box = h("input", { type: "checkbox", value: user.id, checked: selected.has(user.id) });
        box.addEventListener("change", () => {
          if (box.checked) selected.add(user.id);
          else selected.delete(user.id);
          showCount();
        });
        return h("label", { class: "person" }, box, person(user));
      },
    });
    $("new-group").addEventListener("click", () => {
      selected.clear();
      showCount();
      $("group-title").value = "";
      dialog.showModal();
      $("group-title").focus();
      directory.reset();
    });
    $("group-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const title = $("group-title").value.trim();
      if (!title) {
        this.showError("Give the group a title.");
        return $("group-title").focus();
      }
      const create = $("group-create");
      create.disabled = true;
      try {
        await this.createGroup(title, [...selected]);
        dialog.close();
      } catch (err) {
        this.showError(`The group could not be created: ${err.message}`);
      } finally {
        create.disabled = false;
      }
    });
  }
}
