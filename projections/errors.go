package projections

import (
	"errors"
	"fmt"

	"github.com/chatd-dev/chatd/domain"
	"github.com/jackc/pgx/v5/pgconn"
)

// readErr classifies a failed read: a statement PostgreSQL rejected is a bug (internal); any
// other failure means the database cannot be reached, which the caller hears as 503. A nil err
// stays nil.
func readErr(err error, what string) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return domain.Unavailable("the read models are unavailable; try again shortly", fmt.Errorf("%s: %w", what, err))
}
