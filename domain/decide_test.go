package domain_test

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/chatd-dev/chatd/domain"
)

func TestProvisionUser(t *testing.T) {
	existing := &domain.User{ID: "alice", DisplayName: "Alice", CreatedAt: created, UpdatedAt: created}
	tests := []struct {
		name        string
		current     *domain.User
		displayName string
		wantType    string // empty: no event
	}{
		{"new user", nil, "Alice", domain.TypeUserCreated},
		{"renamed", existing, "Alice Liddell", domain.TypeUserUpdated},
		{"renamed in case only", existing, "alice", domain.TypeUserUpdated},
		{"renamed in spacing only", existing, "Alice ", domain.TypeUserUpdated},
		{"unchanged", existing, "Alice", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := domain.ProvisionUser(tt.current, "alice", tt.displayName, lim, now)
			if err != nil {
				t.Fatalf("ProvisionUser: %v", err)
			}
			if tt.wantType == "" {
				if e != nil {
					t.Fatalf("got a %s event, want none: nothing changes", e.Type)
				}
				return
			}
			if e == nil {
				t.Fatalf("got no event, want %s", tt.wantType)
			}
			checkEvent(t, *e, tt.wantType, "", domain.ActorService)
			checkData(t, *e, domain.UserData{UserID: "alice", DisplayName: tt.displayName})
		})
	}

	for _, id := range []string{"", strings.Repeat("a", 65), "al ice", "alice@example.com", "ålice", "a.b", "a*", "a>"} {
		t.Run("invalid id "+id, func(t *testing.T) {
			e, err := domain.ProvisionUser(nil, id, "Alice", lim, now)
			wantCode(t, err, domain.CodeInvalid)
			if e != nil {
				t.Errorf("got an event with the error")
			}
		})
	}

	for _, ls := range limitSets {
		l := ls.limits
		for _, tc := range badTexts(l.MaxDisplayNameBytes) {
			t.Run(ls.name+"/display name "+tc.name, func(t *testing.T) {
				for _, current := range []*domain.User{nil, existing} {
					e, err := domain.ProvisionUser(current, "alice", tc.text, l, now)
					wantCode(t, err, domain.CodeInvalid)
					if e != nil {
						t.Errorf("got an event with the error")
					}
				}
			})
		}
		for _, tc := range goodTexts(l.MaxDisplayNameBytes) {
			t.Run(ls.name+"/display name "+tc.name, func(t *testing.T) {
				e, err := domain.ProvisionUser(nil, "alice", tc.text, l, now)
				if err != nil {
					t.Fatalf("ProvisionUser(%q): %v", tc.text, err)
				}
				checkData(t, *e, domain.UserData{UserID: "alice", DisplayName: tc.text})
			})
		}
	}
}

func TestCreateDirect(t *testing.T) {
	tests := []struct {
		name        string
		actor       string
		members     []string
		wantMembers []string
	}{
		{"the other member only", "alice", []string{"bob"}, []string{"alice", "bob"}},
		{"actor named too", "alice", []string{"alice", "bob"}, []string{"alice", "bob"}},
		{"names repeated", "alice", []string{"bob", "alice", "bob", "alice"}, []string{"alice", "bob"}},
		{"actor sorts after the other", "zoe", []string{"amy"}, []string{"amy", "zoe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := domain.CreateDirect(tt.actor, tt.members, now)
			if err != nil {
				t.Fatalf("CreateDirect: %v", err)
			}
			want := domain.Conversation{
				ID:        domain.DirectID(tt.wantMembers[0], tt.wantMembers[1]),
				Kind:      domain.KindDirect,
				CreatorID: tt.actor,
				Members:   tt.wantMembers,
				CreatedAt: wantTime,
			}
			checkEvent(t, e, domain.TypeConversationCreated, want.ID, tt.actor)
			checkData(t, e, domain.ConversationData{Conversation: want})
			checkConversationOf(t, e, want)
		})
	}

	t.Run("same conversation whoever asks", func(t *testing.T) {
		a, errA := domain.CreateDirect("alice", []string{"bob"}, now)
		b, errB := domain.CreateDirect("bob", []string{"alice"}, now)
		if errA != nil || errB != nil {
			t.Fatalf("CreateDirect: %v, %v", errA, errB)
		}
		if a.ConversationID != b.ConversationID {
			t.Errorf("alice gets %s, bob gets %s", a.ConversationID, b.ConversationID)
		}
		if a.ID == b.ID {
			t.Errorf("both events have id %s", a.ID)
		}
	})

	invalid := []struct {
		name    string
		members []string
	}{
		{"no members", nil},
		{"empty members", []string{}},
		{"only the actor", []string{"alice"}},
		{"only the actor twice", []string{"alice", "alice"}},
		{"two others", []string{"bob", "carol"}},
		{"two others and the actor", []string{"alice", "bob", "carol"}},
		{"invalid other", []string{"bob smith"}},
		{"empty other", []string{""}},
		{"overlong other", []string{strings.Repeat("b", 65)}},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.CreateDirect("alice", tt.members, now)
			wantCode(t, err, domain.CodeInvalid)
		})
	}
}

func TestCreateGroup(t *testing.T) {
	tests := []struct {
		name        string
		limits      domain.Limits
		actor       string
		members     []string
		wantMembers []string
	}{
		{"creator and two members", lim, "alice", []string{"carol", "bob"}, []string{"alice", "bob", "carol"}},
		{"creator alone", lim, "alice", nil, []string{"alice"}},
		{"creator named and repeated", lim, "bob", []string{"carol", "bob", "alice", "carol"}, []string{"alice", "bob", "carol"}},
		{"at the member limit", small, "alice", []string{"bob", "carol"}, []string{"alice", "bob", "carol"}},
		{"at the member limit once deduplicated", small, "alice", []string{"bob", "carol", "bob", "alice"}, []string{"alice", "bob", "carol"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			members := slices.Clone(tt.members)
			e, err := domain.CreateGroup(tt.actor, "Team", members, tt.limits, now)
			if err != nil {
				t.Fatalf("CreateGroup: %v", err)
			}
			if !domain.ValidConversationID(e.ConversationID) || e.ConversationID[0] != 'g' {
				t.Errorf("conversation id %q is not a group id", e.ConversationID)
			}
			want := domain.Conversation{
				ID:        e.ConversationID,
				Kind:      domain.KindGroup,
				Title:     "Team",
				CreatorID: tt.actor,
				Members:   tt.wantMembers,
				CreatedAt: wantTime,
			}
			checkEvent(t, e, domain.TypeConversationCreated, e.ConversationID, tt.actor)
			checkData(t, e, domain.ConversationData{Conversation: want})
			checkConversationOf(t, e, want)
			if !slices.Equal(members, tt.members) {
				t.Errorf("the caller's members changed to %q", members)
			}
		})
	}

	t.Run("each group gets its own id", func(t *testing.T) {
		a, errA := domain.CreateGroup("alice", "Team", []string{"bob"}, lim, now)
		b, errB := domain.CreateGroup("alice", "Team", []string{"bob"}, lim, now)
		if errA != nil || errB != nil {
			t.Fatalf("CreateGroup: %v, %v", errA, errB)
		}
		if a.ConversationID == b.ConversationID {
			t.Errorf("both groups have id %s", a.ConversationID)
		}
	})

	invalid := []struct {
		name    string
		limits  domain.Limits
		members []string
	}{
		{"over the member limit", small, []string{"bob", "carol", "dave"}},
		{"over the member limit with repeats", small, []string{"bob", "carol", "bob", "dave"}},
		{"invalid member", lim, []string{"bob", "not valid"}},
		{"empty member", lim, []string{""}},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.CreateGroup("alice", "Team", tt.members, tt.limits, now)
			wantCode(t, err, domain.CodeInvalid)
		})
	}

	for _, ls := range limitSets {
		l := ls.limits
		for _, tc := range badTexts(l.MaxTitleBytes) {
			t.Run(ls.name+"/title "+tc.name, func(t *testing.T) {
				_, err := domain.CreateGroup("alice", tc.text, []string{"bob"}, l, now)
				wantCode(t, err, domain.CodeInvalid)
			})
		}
		for _, tc := range goodTexts(l.MaxTitleBytes) {
			t.Run(ls.name+"/title "+tc.name, func(t *testing.T) {
				e, err := domain.CreateGroup("alice", tc.text, []string{"bob"}, l, now)
				if err != nil {
					t.Fatalf("CreateGroup(title %q): %v", tc.text, err)
				}
				c, err := domain.ConversationOf(e)
				if err != nil {
					t.Fatal(err)
				}
				if c.Title != tc.text {
					t.Errorf("title = %q, want %q", c.Title, tc.text)
				}
			})
		}
	}
}

func TestAddMember(t *testing.T) {
	group, direct := testGroup(), testDirect()
	pair := withMembers(testGroup(), "alice", "bob")
	tests := []struct {
		name        string
		c           domain.Conversation
		limits      domain.Limits
		actor, user string
		wantMembers []string
	}{
		{"creator adds", group, lim, "alice", "dave", []string{"alice", "bob", "carol", "dave"}},
		{"member adds", group, lim, "carol", "aaron", []string{"aaron", "alice", "bob", "carol"}},
		{"up to the member limit", pair, small, "bob", "carol", []string{"alice", "bob", "carol"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := slices.Clone(tt.c.Members)
			e, err := domain.AddMember(tt.c, tt.actor, tt.user, tt.limits, now)
			if err != nil {
				t.Fatalf("AddMember: %v", err)
			}
			if e == nil {
				t.Fatal("got no event")
			}
			after := withMembers(tt.c, tt.wantMembers...)
			checkEvent(t, *e, domain.TypeMemberJoined, tt.c.ID, tt.actor)
			checkData(t, *e, domain.MemberData{UserID: tt.user, Conversation: after})
			checkConversationOf(t, *e, after)
			if !slices.Equal(tt.c.Members, before) {
				t.Errorf("the conversation passed in changed: members %q", tt.c.Members)
			}
		})
	}

	t.Run("does not write into the caller's members", func(t *testing.T) {
		backing := []string{"alice", "bob", "carol", "", ""}
		c := withMembers(testGroup(), backing[:3]...)
		if _, err := domain.AddMember(c, "alice", "dave", lim, now); err != nil {
			t.Fatal(err)
		}
		if backing[3] != "" || !slices.Equal(backing[:3], []string{"alice", "bob", "carol"}) {
			t.Errorf("the array behind the members became %q", backing)
		}
	})

	unchanged := []struct {
		name        string
		c           domain.Conversation
		limits      domain.Limits
		actor, user string
	}{
		{"already a member", group, lim, "alice", "bob"},
		{"adds themselves", group, lim, "bob", "bob"},
		{"already a member of a full group", group, small, "alice", "carol"},
	}
	for _, tt := range unchanged {
		t.Run(tt.name, func(t *testing.T) {
			e, err := domain.AddMember(tt.c, tt.actor, tt.user, tt.limits, now)
			if err != nil {
				t.Fatalf("AddMember: %v", err)
			}
			if e != nil {
				t.Errorf("got a %s event, want none: nothing changes", e.Type)
			}
		})
	}

	failing := []struct {
		name        string
		c           domain.Conversation
		limits      domain.Limits
		actor, user string
		want        domain.Code
	}{
		{"non-member", group, lim, "mallory", "dave", domain.CodeNotFound},
		{"non-member adds a member", group, lim, "mallory", "bob", domain.CodeNotFound},
		{"non-member adds themselves", group, lim, "mallory", "mallory", domain.CodeNotFound},
		{"non-member of a direct conversation", direct, lim, "mallory", "dave", domain.CodeNotFound},
		{"direct conversation", direct, lim, "alice", "carol", domain.CodeInvalid},
		{"direct conversation, existing member", direct, lim, "alice", "bob", domain.CodeInvalid},
		{"invalid user id", group, lim, "alice", "da ve", domain.CodeInvalid},
		{"empty user id", group, lim, "alice", "", domain.CodeInvalid},
		{"group full", group, small, "alice", "dave", domain.CodeConflict},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			e, err := domain.AddMember(tt.c, tt.actor, tt.user, tt.limits, now)
			wantCode(t, err, tt.want)
			if e != nil {
				t.Errorf("got an event with the error")
			}
		})
	}
}

func TestRemoveMember(t *testing.T) {
	group, direct := testGroup(), testDirect()
	tests := []struct {
		name        string
		c           domain.Conversation
		actor, user string
		wantMembers []string
	}{
		{"creator removes a member", group, "alice", "bob", []string{"alice", "carol"}},
		{"member leaves", group, "bob", "bob", []string{"alice", "carol"}},
		{"creator leaves", group, "alice", "alice", []string{"bob", "carol"}},
		{"last member leaves", withMembers(testGroup(), "carol"), "carol", "carol", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := slices.Clone(tt.c.Members)
			e, err := domain.RemoveMember(tt.c, tt.actor, tt.user, now)
			if err != nil {
				t.Fatalf("RemoveMember: %v", err)
			}
			after := withMembers(tt.c, tt.wantMembers...)
			checkEvent(t, e, domain.TypeMemberLeft, tt.c.ID, tt.actor)
			checkData(t, e, domain.MemberData{UserID: tt.user, Conversation: after})
			checkConversationOf(t, e, after)
			if !slices.Equal(tt.c.Members, before) {
				t.Errorf("the conversation passed in changed: members %q", tt.c.Members)
			}
		})
	}

	failing := []struct {
		name        string
		c           domain.Conversation
		actor, user string
		want        domain.Code
	}{
		{"member removes another", group, "bob", "carol", domain.CodeForbidden},
		{"member removes the creator", group, "bob", "alice", domain.CodeForbidden},
		{"non-member removes a member", group, "mallory", "bob", domain.CodeNotFound},
		{"non-member leaves", group, "mallory", "mallory", domain.CodeNotFound},
		{"non-member of a direct conversation", direct, "mallory", "bob", domain.CodeNotFound},
		{"creator removes a non-member", group, "alice", "dave", domain.CodeNotFound},
		{"direct conversation, creator removes the other", direct, "alice", "bob", domain.CodeInvalid},
		{"direct conversation, member leaves", direct, "bob", "bob", domain.CodeInvalid},
		{"creator who left", withMembers(testGroup(), "bob", "carol"), "alice", "bob", domain.CodeNotFound},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.RemoveMember(tt.c, tt.actor, tt.user, now)
			wantCode(t, err, tt.want)
		})
	}
}

func TestSendMessage(t *testing.T) {
	group, direct := testGroup(), testDirect()
	tests := []struct {
		name  string
		c     domain.Conversation
		actor string
	}{
		{"member of a group", group, "bob"},
		{"creator of a group", group, "alice"},
		{"member of a direct conversation", direct, "bob"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := domain.SendMessage(tt.c, tt.actor, "c-1", "hello", lim, now)
			if err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			checkEvent(t, e, domain.TypeMessageCreated, tt.c.ID, tt.actor)
			want := domain.MessageData{
				MessageID:   domain.MessageID(tt.c.ID, tt.actor, "c-1"),
				SenderID:    tt.actor,
				ClientMsgID: "c-1",
				Body:        "hello",
				BodySHA256:  domain.BodyHash("hello"),
			}
			checkData(t, e, want)
			conv, _, err := domain.SplitMessageID(want.MessageID)
			if err != nil || conv != tt.c.ID {
				t.Errorf("SplitMessageID(%q) = %q, %v; want conversation %q", want.MessageID, conv, err, tt.c.ID)
			}
			m, err := domain.MessageOf(e)
			if err != nil {
				t.Fatal(err)
			}
			wantMsg := domain.Message{ID: want.MessageID, ConversationID: tt.c.ID, SenderID: tt.actor, ClientMsgID: "c-1", Body: "hello", CreatedAt: wantTime}
			if m != wantMsg {
				t.Errorf("MessageOf = %+v, want %+v", m, wantMsg)
			}
		})
	}

	t.Run("a retried send names the same message", func(t *testing.T) {
		first, _ := domain.SendMessage(group, "bob", "c-1", "hello", lim, now)
		retry, _ := domain.SendMessage(group, "bob", "c-1", "hello again", lim, now)
		other, _ := domain.SendMessage(group, "carol", "c-1", "hello", lim, now)
		id := func(e domain.Event) string {
			d, err := domain.DecodeData[domain.MessageData](e)
			if err != nil {
				t.Fatal(err)
			}
			return d.MessageID
		}
		if id(first) != id(retry) {
			t.Errorf("retry has message id %s, first send %s", id(retry), id(first))
		}
		if id(first) == id(other) {
			t.Errorf("bob's and carol's c-1 share message id %s", id(first))
		}
		if first.ID == retry.ID {
			t.Errorf("both events have id %s", first.ID)
		}
	})

	failing := []struct {
		name        string
		c           domain.Conversation
		actor       string
		clientMsgID string
		want        domain.Code
	}{
		{"non-member of a group", group, "mallory", "c-1", domain.CodeNotFound},
		{"non-member of a direct conversation", direct, "carol", "c-1", domain.CodeNotFound},
		{"empty client_msg_id", group, "bob", "", domain.CodeInvalid},
		{"client_msg_id with a space", group, "bob", "c 1", domain.CodeInvalid},
		{"client_msg_id over 64 characters", group, "bob", strings.Repeat("c", 65), domain.CodeInvalid},
		{"non-ASCII client_msg_id", group, "bob", "c-é", domain.CodeInvalid},
		{"client_msg_id with NUL", group, "bob", "c\x00", domain.CodeInvalid},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.SendMessage(tt.c, tt.actor, tt.clientMsgID, "hello", lim, now)
			wantCode(t, err, tt.want)
		})
	}

	for _, ls := range limitSets {
		l := ls.limits
		for _, tc := range badTexts(l.MaxMessageBytes) {
			t.Run(ls.name+"/body "+tc.name, func(t *testing.T) {
				_, err := domain.SendMessage(group, "bob", "c-1", tc.text, l, now)
				wantCode(t, err, domain.CodeInvalid)
			})
		}
		for _, tc := range goodTexts(l.MaxMessageBytes) {
			t.Run(ls.name+"/body "+tc.name, func(t *testing.T) {
				e, err := domain.SendMessage(group, "bob", "c-1", tc.text, l, now)
				if err != nil {
					t.Fatalf("SendMessage(body %q): %v", tc.text, err)
				}
				d, err := domain.DecodeData[domain.MessageData](e)
				if err != nil {
					t.Fatal(err)
				}
				if d.Body != tc.text {
					t.Errorf("body = %q, want %q", d.Body, tc.text)
				}
			})
		}
	}
}

// bobsMessage is a message bob sent in c.
func bobsMessage(c domain.Conversation) domain.Message {
	return domain.Message{
		ID:             domain.MessageID(c.ID, "bob", "c-1"),
		ConversationID: c.ID,
		Seq:            7,
		SenderID:       "bob",
		ClientMsgID:    "c-1",
		Body:           "hello",
		CreatedAt:      created,
	}
}

func deleted(m domain.Message) domain.Message {
	m.Body, m.Deleted = "", true
	return m
}

func TestEditMessage(t *testing.T) {
	group, direct := testGroup(), testDirect()
	tests := []struct {
		name string
		c    domain.Conversation
	}{
		{"author in a group", group},
		{"author in a direct conversation", direct},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := bobsMessage(tt.c)
			e, err := domain.EditMessage(tt.c, m, "bob", "hello, edited", lim, now)
			if err != nil {
				t.Fatalf("EditMessage: %v", err)
			}
			checkEvent(t, e, domain.TypeMessageEdited, tt.c.ID, "bob")
			checkData(t, e, domain.MessageData{MessageID: m.ID, SenderID: "bob", Body: "hello, edited", BodySHA256: domain.BodyHash("hello, edited")})
			got, err := domain.ApplyMessage(m, e)
			if err != nil {
				t.Fatal(err)
			}
			if got.Body != "hello, edited" || got.EditedAt == nil || !got.EditedAt.Equal(wantTime) || got.Deleted {
				t.Errorf("ApplyMessage = %+v, want the new body edited at %v", got, wantTime)
			}
		})
	}

	failing := []struct {
		name  string
		c     domain.Conversation
		m     domain.Message
		actor string
		want  domain.Code
	}{
		{"non-member", group, bobsMessage(group), "mallory", domain.CodeNotFound},
		{"author who left", withMembers(testGroup(), "alice", "carol"), bobsMessage(group), "bob", domain.CodeNotFound},
		{"deleted message", group, deleted(bobsMessage(group)), "bob", domain.CodeConflict},
		{"deleted message in a direct conversation", direct, deleted(bobsMessage(direct)), "bob", domain.CodeConflict},
		{"another member", group, bobsMessage(group), "carol", domain.CodeForbidden},
		{"the group's creator", group, bobsMessage(group), "alice", domain.CodeForbidden},
		{"the other member of a direct conversation", direct, bobsMessage(direct), "alice", domain.CodeForbidden},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.EditMessage(tt.c, tt.m, tt.actor, "hello, edited", lim, now)
			wantCode(t, err, tt.want)
		})
	}

	for _, ls := range limitSets {
		l := ls.limits
		for _, tc := range badTexts(l.MaxMessageBytes) {
			t.Run(ls.name+"/body "+tc.name, func(t *testing.T) {
				_, err := domain.EditMessage(group, bobsMessage(group), "bob", tc.text, l, now)
				wantCode(t, err, domain.CodeInvalid)
			})
		}
		for _, tc := range goodTexts(l.MaxMessageBytes) {
			t.Run(ls.name+"/body "+tc.name, func(t *testing.T) {
				e, err := domain.EditMessage(group, bobsMessage(group), "bob", tc.text, l, now)
				if err != nil {
					t.Fatalf("EditMessage(body %q): %v", tc.text, err)
				}
				checkData(t, e, domain.MessageData{MessageID: bobsMessage(group).ID, SenderID: "bob", Body: tc.text, BodySHA256: domain.BodyHash(tc.text)})
			})
		}
	}
}

func TestDeleteMessage(t *testing.T) {
	group, direct := testGroup(), testDirect()
	tests := []struct {
		name  string
		c     domain.Conversation
		actor string
	}{
		{"author in a group", group, "bob"},
		{"the group's creator", group, "alice"},
		{"author in a direct conversation", direct, "bob"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := bobsMessage(tt.c)
			e, err := domain.DeleteMessage(tt.c, m, tt.actor, now)
			if err != nil {
				t.Fatalf("DeleteMessage: %v", err)
			}
			checkEvent(t, e, domain.TypeMessageDeleted, tt.c.ID, tt.actor)
			checkData(t, e, domain.MessageData{MessageID: m.ID, SenderID: "bob"})
			got, err := domain.ApplyMessage(m, e)
			if err != nil {
				t.Fatal(err)
			}
			if got != deleted(m) {
				t.Errorf("ApplyMessage = %+v, want %+v", got, deleted(m))
			}
		})
	}

	failing := []struct {
		name  string
		c     domain.Conversation
		m     domain.Message
		actor string
		want  domain.Code
	}{
		{"creator of a direct conversation", direct, bobsMessage(direct), "alice", domain.CodeForbidden},
		{"another member of a group", group, bobsMessage(group), "carol", domain.CodeForbidden},
		{"non-member", group, bobsMessage(group), "mallory", domain.CodeNotFound},
		{"non-member of a direct conversation", direct, bobsMessage(direct), "carol", domain.CodeNotFound},
		{"author who left", withMembers(testGroup(), "alice", "carol"), bobsMessage(group), "bob", domain.CodeNotFound},
		{"creator who left", withMembers(testGroup(), "bob", "carol"), bobsMessage(group), "alice", domain.CodeNotFound},
		{"already deleted, by the author", group, deleted(bobsMessage(group)), "bob", domain.CodeConflict},
		{"already deleted, by the creator", group, deleted(bobsMessage(group)), "alice", domain.CodeConflict},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.DeleteMessage(tt.c, tt.m, tt.actor, now)
			wantCode(t, err, tt.want)
		})
	}
}

func TestMarkRead(t *testing.T) {
	group, direct := testGroup(), testDirect()
	tests := []struct {
		name  string
		c     domain.Conversation
		actor string
		seq   uint64
	}{
		{"first sequence", group, "bob", 1},
		{"largest sequence", group, "alice", domain.MaxSeq},
		{"direct conversation", direct, "bob", 42},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := domain.MarkRead(tt.c, tt.actor, tt.seq, now)
			if err != nil {
				t.Fatalf("MarkRead: %v", err)
			}
			checkEvent(t, e, domain.TypeReadUpdated, tt.c.ID, tt.actor)
			checkData(t, e, domain.ReadData{UserID: tt.actor, Seq: tt.seq})
		})
	}

	failing := []struct {
		name  string
		c     domain.Conversation
		actor string
		seq   uint64
		want  domain.Code
	}{
		{"sequence 0", group, "bob", 0, domain.CodeInvalid},
		// PostgreSQL stores sequences as bigint: a marker past it would stop the projector.
		{"sequence past bigint", group, "bob", domain.MaxSeq + 1, domain.CodeInvalid},
		{"largest uint64", group, "bob", math.MaxUint64, domain.CodeInvalid},
		{"non-member", group, "mallory", 5, domain.CodeNotFound},
		{"non-member, sequence 0", group, "mallory", 0, domain.CodeNotFound},
		{"non-member of a direct conversation", direct, "carol", 5, domain.CodeNotFound},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.MarkRead(tt.c, tt.actor, tt.seq, now)
			wantCode(t, err, tt.want)
		})
	}
}
