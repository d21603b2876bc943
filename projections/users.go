package projections

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Users is the read model of provisioned users: the directory.
type Users struct{ pool *pgxpool.Pool }

// NewUsers returns the users read model on pool.
func NewUsers(pool *pgxpool.Pool) Users { return Users{pool: pool} }

func (Users) apply(b *pgx.Batch, e domain.Event) error {
	if e.Type != domain.TypeUserCreated && e.Type != domain.TypeUserUpdated {
		return nil
	}
	d, err := domain.DecodeData[domain.UserData](e)
	if err != nil {
		return err
	}
	b.Queue(`INSERT INTO users (id, display_name, created_at, updated_at, seq) VALUES ($1, $2, $3, $3, $4)
		ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name, updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq
		WHERE users.seq < EXCLUDED.seq`, d.UserID, d.DisplayName, e.Time, e.Seq)
	return nil
}

type userRow struct {
	ID          string    `db:"id"`
	SortName    string    `db:"sort_name"` // lower(display_name) as PostgreSQL folds it, for cursors
	DisplayName string    `db:"display_name"`
	CreatedAt   time.Time `db:"created_at"`
	UpdatedAt   time.Time `db:"updated_at"`
}

func (r userRow) user() domain.User {
	return domain.User{ID: r.ID, DisplayName: r.DisplayName, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
}

// Get returns one user.
func (u Users) Get(ctx context.Context, id string) (domain.User, error) {
	rows, _ := u.pool.Query(ctx, `SELECT id, lower(display_name) AS sort_name, display_name, created_at, updated_at FROM users WHERE id = $1`, id)
	r, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[userRow])
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.User{}, domain.Errorf(domain.CodeNotFound, "user %s not found", id)
	}
	if err != nil {
		return domain.User{}, readErr(err, "get user")
	}
	return r.user(), nil
}

// Search lists users whose display name contains q or whose id starts with q (case
// insensitive), ordered by display name. cursor is the opaque next_cursor of the previous page.
func (u Users) Search(ctx context.Context, q, cursor string, limit int) (users []domain.User, next string, err error) {
	afterName, afterID, err := decodeUserCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	q = strings.ToLower(q)
	like := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(q)
	rows, _ := u.pool.Query(ctx, `SELECT id, lower(display_name) AS sort_name, display_name, created_at, updated_at FROM users
		WHERE ($1 = '' OR lower(display_name) LIKE '%' || $2 || '%' OR lower(id) LIKE $2 || '%')
		  AND ($3 = '' AND $4 = '' OR (lower(display_name), id) > ($3, $4))
		ORDER BY lower(display_name), id
		LIMIT $5`, q, like, afterName, afterID, limit+1)
	list, err := pgx.CollectRows(rows, pgx.RowToStructByName[userRow])
	if err != nil {
		return nil, "", readErr(err, "search users")
	}
	if len(list) > limit {
		list = list[:limit]
		last := list[limit-1]
		next = encodeUserCursor(last.SortName, last.ID)
	}
	users = make([]domain.User, len(list))
	for i, r := range list {
		users[i] = r.user()
	}
	return users, next, nil
}

func encodeUserCursor(name, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(name + "\x00" + id))
}

func decodeUserCursor(c string) (name, id string, err error) {
	if c == "" {
		return "", "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return "", "", domain.Errorf(domain.CodeInvalid, "malformed cursor")
	}
	name, id, ok := strings.Cut(string(b), "\x00")
	if !ok || id == "" {
		return "", "", domain.Errorf(domain.CodeInvalid, "malformed cursor")
	}
	return name, id, nil
}
