// The members panel of the open conversation: who is in it and who is online; in a group, adding
// members, removing them (the creator) and leaving.

import { $, h, debounce } from "./dom.js";

export class MembersPanel {
  // deps: api, me, presence (Map user id -> online), showError(message), onChanged(conversationId,
  // seq) after a membership change, onLeft(conversationId) after leaving.
  constructor(deps) {
    Object.assign(this, deps);
    this.conv = null;
    this.heading = $("members-heading");
    this.list = $("members");
    this.form = $("add-member-form");
    this.input = $("add-member-input");
    this.addButton = $("add-member");
    this.suggestions = $("add-member-suggestions");
    this.leaveButton = $("leave-group");
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.add();
    });
    this.input.addEventListener("input", debounce(() => this.suggest(), 250));
    this.leaveButton.addEventListener("click", () => this.leave());
  }

  render(conv) {
    this.conv = conv;
    const group = conv.kind === "group";
    const creator = group && conv.creator_id === this.me.id;
    this.heading.textContent = group ? `Members (${conv.members.length})` : "People";
    this.list.replaceChildren(...conv.members.map((m) => this.item(m, group, creator)));
    this.form.hidden = !group;
    this.leaveButton.hidden = !group;
    this.updatePresence();
  }

  item(member, group, creator) {
    const you = member.user_id === this.me.id;
    const roles = [you && "you", group && member.user_id === this.conv.creator_id && "creator"].filter(Boolean);
    return h(
      "li",
      { class: "member", "data-member-id": member.user_id },
      h("span", { class: "presence", role: "img", "data-online": "false", "aria-label": "offline" }),
      h("span", { class: "name" }, member.display_name),
      roles.length ? h("span", { class: "role" }, roles.join(", ")) : null,
      creator && !you
        ? h(
            "button",
            {
              type: "button",
              class: "link remove-member",
              "aria-label": `Remove ${member.display_name} from the group`,
              onclick: (e) => this.remove(member, e.currentTarget),
            },
            "Remove",
          )
        : null,
    );
  }

  updatePresence() {
    for (const dot of this.list.querySelectorAll(".presence")) {
      const online = this.presence.get(dot.parentElement.dataset.memberId) === true;
      dot.dataset.online = String(online);
      dot.setAttribute("aria-label", online ? "online" : "offline");
    }
  }

  async add() {
    const userId = this.input.value.trim();
    if (!userId || !this.conv) return;
    const conv = this.conv;
    this.addButton.disabled = true;
    try {
      const { seq } = await this.api.addMember(conv.id, userId);
      this.input.value = "";
      await this.onChanged(conv.id, seq);
    } catch (err) {
      this.showError(`${userId} could not be added: ${err.message}`);
    } finally {
      this.addButton.disabled = false;
    }
  }

  async remove(member, button) {
    const conv = this.conv;
    button.disabled = true;
    try {
      const { seq } = await this.api.removeMember(conv.id, member.user_id);
      await this.onChanged(conv.id, seq);
      this.heading.focus();
    } catch (err) {
      button.disabled = false;
      this.showError(`${member.display_name} could not be removed: ${err.message}`);
    }
  }

  async leave() {
    const conv = this.conv;
    this.leaveButton.disabled = true;
    try {
      await this.api.removeMember(conv.id, this.me.id);
      this.onLeft(conv.id);
    } catch (err) {
      this.showError(`You could not leave the group: ${err.message}`);
    } finally {
      this.leaveButton.disabled = false;
    }
  }

  // suggest offers matching users from the directory while the user types a name or an id.
  async suggest() {
    const q = this.input.value.trim();
    if (!q) return this.suggestions.replaceChildren();
    try {
      const { users } = await this.api.users({ q, limit: 8 });
      const members = new Set(this.conv?.members.map((m) => m.user_id));
      const options = users.filter((u) => !members.has(u.id)).map((u) => h("option", { value: u.id, label: u.display_name }));
      this.suggestions.replaceChildren(...options);
    } catch {
      // Suggestions are a convenience; typing the user id still works.
    }
  }
}
