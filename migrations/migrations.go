// Package migrations holds the read-model schema as numbered SQL files, embedded in the binary
// and applied by tern (see docs/architecture.md for why tern).
package migrations

import (
	"context"
	"embed"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed *.sql
var files embed.FS

// VersionTable is the table in which tern records the applied schema version.
const VersionTable = "schema_version"

// Migrate brings the database behind conn to the newest schema. It is safe to run from several
// processes at once: tern serialises them with an advisory lock.
func Migrate(ctx context.Context, conn *pgx.Conn) error {
	m, err := migrator(ctx, conn)
	if err != nil {
		return err
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// Versions returns the schema version of the database behind conn and the one this build
// migrates to.
func Versions(ctx context.Context, conn *pgx.Conn) (current, latest int32, err error) {
	m, err := migrator(ctx, conn)
	if err != nil {
		return 0, 0, err
	}
	current, err = m.GetCurrentVersion(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("read the schema version: %w", err)
	}
	return current, int32(len(m.Migrations)), nil
}

// migrator is tern's migrator for the database behind conn, with this build's migrations.
func migrator(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return nil, fmt.Errorf("prepare migrator: %w", err)
	}
	if err := m.LoadMigrations(files); err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return m, nil
}
