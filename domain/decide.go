package domain

import (
	"slices"
	"time"
)

// The Decide functions are the command side's rules. Each takes state derived from the stream
// and returns the event to append. Callers that need other facts (does this user exist?) check
// them before calling; callers append the event with an expectation on the state it was decided
// against, so a decision can never act on stale state (see streams.Store).

// errNoConversation is what a non-member hears about a conversation: the same answer as for one
// that does not exist, so ids cannot be probed.
func errNoConversation() *Error { return Errorf(CodeNotFound, "conversation not found") }

// ProvisionUser decides a host's create-or-update of a user. current is nil when the user does
// not exist yet. It returns a nil event when nothing would change, so PUT is idempotent.
func ProvisionUser(current *User, id, displayName string, lim Limits, now time.Time) (*Event, error) {
	if err := ValidUserID(id); err != nil {
		return nil, err
	}
	if err := validText("display_name", displayName, lim.MaxDisplayNameBytes, true); err != nil {
		return nil, err
	}
	data := UserData{UserID: id, DisplayName: displayName}
	switch {
	case current == nil:
		e := newEvent(TypeUserCreated, "", ActorService, now, data)
		return &e, nil
	case current.DisplayName != displayName:
		e := newEvent(TypeUserUpdated, "", ActorService, now, data)
		return &e, nil
	}
	return nil, nil
}

// CreateDirect decides a direct conversation between actor and the one other user in members
// (members may name actor too). Its id is DirectID, so the stream refuses a second one.
func CreateDirect(actor string, members []string, now time.Time) (Event, error) {
	others := withoutUser(dedupe(members), actor)
	if len(others) != 1 {
		return Event{}, Errorf(CodeInvalid, "a direct conversation has exactly one other member, got %d", len(others))
	}
	if err := ValidUserID(others[0]); err != nil {
		return Event{}, err
	}
	c := Conversation{
		ID:        DirectID(actor, others[0]),
		Kind:      KindDirect,
		CreatorID: actor,
		Members:   sorted([]string{actor, others[0]}),
		CreatedAt: eventTime(now),
	}
	return newEvent(TypeConversationCreated, c.ID, actor, now, ConversationData{Conversation: c}), nil
}

// CreateGroup decides a new group with actor as creator and member.
func CreateGroup(actor, title string, members []string, lim Limits, now time.Time) (Event, error) {
	if err := validText("title", title, lim.MaxTitleBytes, true); err != nil {
		return Event{}, err
	}
	all := sorted(dedupe(append([]string{actor}, members...)))
	for _, m := range all {
		if err := ValidUserID(m); err != nil {
			return Event{}, err
		}
	}
	if len(all) > lim.MaxGroupMembers {
		return Event{}, Errorf(CodeInvalid, "a group may have at most %d members, got %d", lim.MaxGroupMembers, len(all))
	}
	c := Conversation{
		ID:        NewGroupID(),
		Kind:      KindGroup,
		Title:     title,
		CreatorID: actor,
		Members:   all,
		CreatedAt: eventTime(now),
	}
	return newEvent(TypeConversationCreated, c.ID, actor, now, ConversationData{Conversation: c}), nil
}

// AddMember decides that actor adds user to group c. Any member may add; adding a member again
// changes nothing and returns a nil event, so retries are harmless.
func AddMember(c Conversation, actor, user string, lim Limits, now time.Time) (*Event, error) {
	if !c.IsMember(actor) {
		return nil, errNoConversation()
	}
	if c.Kind != KindGroup {
		return nil, Errorf(CodeInvalid, "members can only be added to groups")
	}
	if err := ValidUserID(user); err != nil {
		return nil, err
	}
	if c.IsMember(user) {
		return nil, nil
	}
	if len(c.Members) >= lim.MaxGroupMembers {
		return nil, Errorf(CodeConflict, "the group already has the maximum of %d members", lim.MaxGroupMembers)
	}
	after := c
	after.Members = sorted(append(slices.Clone(c.Members), user))
	e := newEvent(TypeMemberJoined, c.ID, actor, now, MemberData{UserID: user, Conversation: after})
	return &e, nil
}

// RemoveMember decides that actor removes user from group c: members may leave, and the
// group's creator may remove anyone.
func RemoveMember(c Conversation, actor, user string, now time.Time) (Event, error) {
	if !c.IsMember(actor) {
		return Event{}, errNoConversation()
	}
	if c.Kind != KindGroup {
		return Event{}, Errorf(CodeInvalid, "members can only be removed from groups")
	}
	if actor != user && actor != c.CreatorID {
		return Event{}, Errorf(CodeForbidden, "only the group's creator may remove other members")
	}
	if !c.IsMember(user) {
		return Event{}, Errorf(CodeNotFound, "%s is not a member of this conversation", user)
	}
	after := c
	after.Members = withoutUser(c.Members, user)
	return newEvent(TypeMemberLeft, c.ID, actor, now, MemberData{UserID: user, Conversation: after}), nil
}

// SendMessage decides that actor sends body to c. The message id is derived from the
// conversation, the sender and clientMsgID (see MessageID).
func SendMessage(c Conversation, actor, clientMsgID, body string, lim Limits, now time.Time) (Event, error) {
	if !c.IsMember(actor) {
		return Event{}, errNoConversation()
	}
	if err := ValidClientMsgID(clientMsgID); err != nil {
		return Event{}, err
	}
	if err := validText("body", body, lim.MaxMessageBytes, true); err != nil {
		return Event{}, err
	}
	return newEvent(TypeMessageCreated, c.ID, actor, now, MessageData{
		MessageID:   MessageID(c.ID, actor, clientMsgID),
		SenderID:    actor,
		ClientMsgID: clientMsgID,
		Body:        body,
		BodySHA256:  BodyHash(body),
	}), nil
}

// EditMessage decides that actor replaces the body of m, a message of c. Only its author may.
func EditMessage(c Conversation, m Message, actor, body string, lim Limits, now time.Time) (Event, error) {
	if !c.IsMember(actor) {
		return Event{}, Errorf(CodeNotFound, "message not found")
	}
	if m.Deleted {
		return Event{}, Errorf(CodeConflict, "the message was deleted")
	}
	if m.SenderID != actor {
		return Event{}, Errorf(CodeForbidden, "only the author may edit a message")
	}
	if err := validText("body", body, lim.MaxMessageBytes, true); err != nil {
		return Event{}, err
	}
	return newEvent(TypeMessageEdited, c.ID, actor, now, MessageData{MessageID: m.ID, SenderID: m.SenderID, Body: body, BodySHA256: BodyHash(body)}), nil
}

// DeleteMessage decides that actor deletes m, a message of c: its author may, and so may the
// creator of a group. Deleting a deleted message is a conflict, not a second event.
func DeleteMessage(c Conversation, m Message, actor string, now time.Time) (Event, error) {
	if !c.IsMember(actor) {
		return Event{}, Errorf(CodeNotFound, "message not found")
	}
	if m.Deleted {
		return Event{}, Errorf(CodeConflict, "the message was already deleted")
	}
	if m.SenderID != actor && !(c.Kind == KindGroup && c.CreatorID == actor) {
		return Event{}, Errorf(CodeForbidden, "only the author or the group's creator may delete a message")
	}
	return newEvent(TypeMessageDeleted, c.ID, actor, now, MessageData{MessageID: m.ID, SenderID: m.SenderID}), nil
}

// MarkRead decides that actor has read c up to seq. The read model keeps the highest marker,
// so a marker that moves back changes nothing there.
func MarkRead(c Conversation, actor string, seq uint64, now time.Time) (Event, error) {
	if !c.IsMember(actor) {
		return Event{}, errNoConversation()
	}
	if seq == 0 || seq > MaxSeq {
		return Event{}, Errorf(CodeInvalid, "seq must be a positive stream sequence (at most %d)", uint64(MaxSeq))
	}
	return newEvent(TypeReadUpdated, c.ID, actor, now, ReadData{UserID: actor, Seq: seq}), nil
}

func dedupe(ids []string) []string {
	seen := make(map[string]bool, len(ids))
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

func withoutUser(ids []string, user string) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if id != user {
			out = append(out, id)
		}
	}
	return out
}

func sorted(ids []string) []string {
	slices.Sort(ids)
	return ids
}
