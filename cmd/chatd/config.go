package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/chatd-dev/chatd/domain"
)

// Config is every setting of chatd. Each comes from a flag, else an environment variable, else
// its default; the defaults run the whole product on one machine.
type Config struct {
	Addr            string
	AdminAddr       string
	DemoAddr        string
	PublicURL       string
	DataDir         string
	NATSURL         string
	NATSListen      string
	NATSSync        string
	DatabaseURL     string
	ServiceKey      string
	JWTSecret       string
	StreamReplicas  int
	DenyDelete      bool
	DuplicateWindow time.Duration
	TokenMaxTTL     time.Duration
	MinSeqTimeout   time.Duration
	MaxBodyBytes    int
	Limits          domain.Limits
	AllowedOrigins  string
	WSSendQueue     int
	WSMaxReplay     int
	LogLevel        string
	LogFormat       string
}

// setting describes one configuration value, for parsing and for printing it at start.
type setting struct {
	flag, env, usage string
	secret           bool
	value            flag.Value
}

// settings binds c's fields to flags and environment variables.
func (c *Config) settings() []setting {
	lim := &c.Limits
	return []setting{
		{"addr", "CHAT_ADDR", "HTTP listen address", false, (*stringValue)(&c.Addr)},
		{"admin-addr", "CHAT_ADMIN_ADDR", "listen address of the pprof endpoints (keep it on loopback); empty turns them off", false, (*stringValue)(&c.AdminAddr)},
		{"demo-addr", "CHAT_DEMO_ADDR", `listen address of the demo host site, another origin that embeds the chat; "off" turns it off`, false, (*stringValue)(&c.DemoAddr)},
		{"public-url", "CHAT_PUBLIC_URL", "chatd's base URL as browsers reach it (default: from the listen address)", false, (*stringValue)(&c.PublicURL)},
		{"data-dir", "CHAT_DATA_DIR", "data directory: embedded NATS store, embedded PostgreSQL, generated secrets", false, (*stringValue)(&c.DataDir)},
		{"nats-url", "CHAT_NATS_URL", "external NATS server(s); empty runs an embedded server", false, (*stringValue)(&c.NATSURL)},
		{"nats-listen", "CHAT_NATS_LISTEN", "client address of the embedded NATS server", false, (*stringValue)(&c.NATSListen)},
		{"nats-sync", "CHAT_NATS_SYNC", `embedded JetStream fsync: "always" or an interval such as "1s"`, false, (*stringValue)(&c.NATSSync)},
		{"database-url", "DATABASE_URL", "external PostgreSQL; empty runs a private cluster under the data directory", true, (*stringValue)(&c.DatabaseURL)},
		{"service-key", "CHAT_SERVICE_KEY", "the host site's key for the service API (generated into the data directory when empty)", true, (*stringValue)(&c.ServiceKey)},
		{"jwt-secret", "CHAT_JWT_SECRET", "HS256 secret shared with the host for user tokens (generated when empty)", true, (*stringValue)(&c.JWTSecret)},
		{"stream-replicas", "CHAT_STREAM_REPLICAS", "replicas of the events stream (3 on a NATS cluster)", false, (*intValue)(&c.StreamReplicas)},
		{"stream-deny-delete", "CHAT_STREAM_DENY_DELETE", "make the events stream refuse deletes and purges by every client (cannot be undone)", false, (*boolValue)(&c.DenyDelete)},
		{"duplicate-window", "CHAT_DUPLICATE_WINDOW", "JetStream duplicate window for concurrent retries", false, (*durationValue)(&c.DuplicateWindow)},
		{"token-max-ttl", "CHAT_TOKEN_MAX_TTL", "longest lifetime of a minted user token", false, (*durationValue)(&c.TokenMaxTTL)},
		{"min-seq-timeout", "CHAT_MIN_SEQ_TIMEOUT", "longest wait of a read with min_seq", false, (*durationValue)(&c.MinSeqTimeout)},
		{"max-body-bytes", "CHAT_MAX_BODY_BYTES", "largest request body", false, (*intValue)(&c.MaxBodyBytes)},
		{"max-message-bytes", "CHAT_MAX_MESSAGE_BYTES", "largest message body (UTF-8 bytes)", false, (*intValue)(&lim.MaxMessageBytes)},
		{"max-title-bytes", "CHAT_MAX_TITLE_BYTES", "longest group title", false, (*intValue)(&lim.MaxTitleBytes)},
		{"max-display-name-bytes", "CHAT_MAX_DISPLAY_NAME_BYTES", "longest display name", false, (*intValue)(&lim.MaxDisplayNameBytes)},
		{"max-group-members", "CHAT_MAX_GROUP_MEMBERS", "most members of one group", false, (*intValue)(&lim.MaxGroupMembers)},
		{"allowed-origins", "CHAT_ALLOWED_ORIGINS", "comma-separated origins of host sites that embed the chat (scheme://host[:port])", false, (*stringValue)(&c.AllowedOrigins)},
		{"ws-send-queue", "CHAT_WS_SEND_QUEUE", "frames queued per WebSocket before the client counts as too slow (closed with 4008)", false, (*intValue)(&c.WSSendQueue)},
		{"ws-max-replay", "CHAT_WS_MAX_REPLAY", "most events replayed to a resuming WebSocket before resync_required", false, (*intValue)(&c.WSMaxReplay)},
		{"log-level", "CHAT_LOG_LEVEL", "debug, info, warn or error", false, (*stringValue)(&c.LogLevel)},
		{"log-format", "CHAT_LOG_FORMAT", "text or json", false, (*stringValue)(&c.LogFormat)},
	}
}

func defaultConfig() Config {
	return Config{
		Addr:            ":8080",
		DemoAddr:        "127.0.0.1:8081",
		DataDir:         "./data",
		NATSListen:      "127.0.0.1:4222",
		NATSSync:        "1s",
		StreamReplicas:  1,
		DuplicateWindow: 2 * time.Minute,
		TokenMaxTTL:     24 * time.Hour,
		MinSeqTimeout:   5 * time.Second,
		MaxBodyBytes:    64 << 10,
		Limits:          domain.DefaultLimits,
		WSSendQueue:     1024,
		WSMaxReplay:     10_000,
		LogLevel:        "info",
		LogFormat:       "text",
	}
}

// parseConfig reads the environment, then flags (which win), and validates the result once.
func parseConfig(name string, args []string, getenv func(string) string, stderr io.Writer) (Config, []string, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	for _, s := range c.settings() {
		if v := getenv(s.env); v != "" {
			if err := s.value.Set(v); err != nil {
				return c, nil, fmt.Errorf("%s=%q: %w", s.env, v, err)
			}
		}
		fs.Var(s.value, s.flag, fmt.Sprintf("%s (env %s)", s.usage, s.env))
	}
	if err := fs.Parse(args); err != nil {
		return c, nil, err
	}
	// The demo host site mints tokens for anyone who opens it: it is for trying chatd on its
	// embedded defaults, and off by default once chatd runs against external servers.
	explicitDemo := getenv("CHAT_DEMO_ADDR") != ""
	fs.Visit(func(f *flag.Flag) { explicitDemo = explicitDemo || f.Name == "demo-addr" })
	if !explicitDemo && (c.NATSURL != "" || c.DatabaseURL != "") {
		c.DemoAddr = "off"
	}
	// The host sends the key in a header, whose value HTTP trims: so is the configured key, or
	// a trailing newline (a secret mounted from a file) would refuse every request.
	c.ServiceKey = strings.TrimSpace(c.ServiceKey)
	return c, fs.Args(), c.validate()
}

func (c Config) validate() error {
	var problems []string
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		problems = append(problems, "stream replicas must be 1 to 5")
	}
	if c.NATSSync != "always" {
		if d, err := time.ParseDuration(c.NATSSync); err != nil || d <= 0 {
			problems = append(problems, `nats sync must be "always" or a positive duration`)
		}
	}
	if c.DuplicateWindow < time.Second {
		problems = append(problems, "duplicate window must be at least 1s")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		problems = append(problems, "log level must be debug, info, warn or error")
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		problems = append(problems, "log format must be text or json")
	}
	if c.TokenMaxTTL < time.Minute {
		problems = append(problems, "token max TTL must be at least 1m")
	}
	if c.WSSendQueue < 512 || c.WSMaxReplay < 1 {
		problems = append(problems, "the WebSocket send queue must be at least 512 (one projector batch of 500 events can arrive at once) and max replay positive")
	}
	if c.MinSeqTimeout <= 0 || c.MaxBodyBytes < 1024 {
		problems = append(problems, "min-seq timeout must be positive and max body at least 1024 bytes")
	}
	l := c.Limits
	if l.MaxMessageBytes < 1 || l.MaxTitleBytes < 1 || l.MaxDisplayNameBytes < 1 || l.MaxGroupMembers < 2 {
		problems = append(problems, "limits must be positive (a group needs at least 2 members)")
	}
	if l.MaxMessageBytes > c.MaxBodyBytes/2 {
		problems = append(problems, "max message bytes must be at most half of max body bytes (JSON escaping)")
	}
	for _, s := range []struct{ name, v string }{{"service key", c.ServiceKey}, {"JWT secret", c.JWTSecret}} {
		if s.v != "" && len(s.v) < 32 {
			problems = append(problems, s.name+" must be at least 32 bytes")
		}
	}
	if c.NATSURL != "" && (c.ServiceKey == "" || c.JWTSecret == "") {
		problems = append(problems, "with an external NATS (several nodes), set CHAT_SERVICE_KEY and CHAT_JWT_SECRET: every node must share them")
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			problems = append(problems, fmt.Sprintf("public URL %q must look like https://host[:port][/path]", c.PublicURL))
		}
	}
	for _, o := range c.origins() {
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			problems = append(problems, fmt.Sprintf("allowed origin %q must look like https://host[:port]", o))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid configuration: %s", strings.Join(problems, "; "))
	}
	return nil
}

// origins returns the allowed origins (of host sites) as a list.
func (c Config) origins() []string {
	var out []string
	for _, o := range strings.Split(c.AllowedOrigins, ",") {
		if o = strings.TrimRight(strings.TrimSpace(o), "/"); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// demo reports whether the demo host site runs.
func (c Config) demo() bool { return c.DemoAddr != "off" && c.DemoAddr != "" }

// print writes the configuration, secrets masked, one setting a line.
func (c *Config) print(w io.Writer) {
	for _, s := range c.settings() {
		v := s.value.String()
		switch {
		case s.secret && v != "":
			v = "****"
		case s.env == "CHAT_NATS_URL":
			v = redactURLs(v)
		}
		fmt.Fprintf(w, "  %-28s %s\n", s.env, v)
	}
}

// redactURLs masks the credentials in a comma-separated list of server URLs (nats://user:pass@host),
// for logs and error messages.
func redactURLs(list string) string {
	urls := strings.Split(list, ",")
	for i, raw := range urls {
		if u, err := url.Parse(strings.TrimSpace(raw)); err == nil && u.User != nil {
			u.User = url.User("REDACTED")
			urls[i] = u.String()
		} else if err != nil && strings.Contains(raw, "@") {
			urls[i] = "REDACTED" // unparseable, and it may hold credentials
		}
	}
	return strings.Join(urls, ",")
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("not an integer")
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("not true or false")
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration such as 30s or 2m")
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }
