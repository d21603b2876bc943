package api

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/chatd-dev/chatd/domain"
	"github.com/golang-jwt/jwt/v5"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/labstack/echo/v4"
)

// Auth checks the two kinds of credentials: the host site's service key, and user tokens. User
// tokens are HS256 JWTs signed with a secret that chatd shares with the host, so the host may
// mint them itself or ask chatd to (POST /api/v1/tokens).
type Auth struct {
	serviceKey []byte
	secret     []byte
	maxTTL     time.Duration
	now        func() time.Time
	// verified remembers the claims of tokens whose signature checked out: a client sends the
	// same token with every request, and parsing it again (base64, JSON, HMAC) was 4 % of the
	// CPU of a send. Only the signature check is skipped; times are checked on every use.
	verified *lru.Cache[string, Claims]
}

// Issuer is the iss claim of tokens chatd mints. Tokens minted by the host may carry any.
const Issuer = "chatd"

// MinSecretBytes is the shortest accepted JWT secret and service key: HS256 wants 256 bits.
const MinSecretBytes = 32

// NewAuth returns an Auth for the service key and JWT secret. maxTTL caps token lifetimes.
func NewAuth(serviceKey, jwtSecret string, maxTTL time.Duration) (*Auth, error) {
	if len(serviceKey) < MinSecretBytes || len(jwtSecret) < MinSecretBytes {
		return nil, fmt.Errorf("the service key and the JWT secret must be at least %d bytes", MinSecretBytes)
	}
	verified, _ := lru.New[string, Claims](10_000) // only errs on size <= 0
	return &Auth{serviceKey: []byte(serviceKey), secret: []byte(jwtSecret), maxTTL: maxTTL, now: time.Now, verified: verified}, nil
}

// Claims are what a user token says.
type Claims struct {
	jwt.RegisteredClaims
	// Admin grants the admin endpoints (audit export). Only the host grants it: in tokens it
	// signs, or through POST /api/v1/tokens with its service key.
	Admin bool `json:"admin,omitempty"`
}

// Mint returns a token for user valid for ttl (at most the configured maximum); admin tokens
// also open the admin endpoints.
func (a *Auth) Mint(user string, ttl time.Duration, admin bool) (string, time.Time, error) {
	if err := domain.ValidUserID(user); err != nil {
		return "", time.Time{}, err
	}
	if ttl <= 0 || ttl > a.maxTTL {
		return "", time.Time{}, domain.Errorf(domain.CodeInvalid, "ttl_seconds must be between 1 and %d", int(a.maxTTL.Seconds()))
	}
	now := a.now().Truncate(time.Second)
	exp := now.Add(ttl)
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{jwt.RegisteredClaims{
		Issuer:    Issuer,
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(exp),
	}, admin})
	s, err := tok.SignedString(a.secret)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, exp, nil
}

// Verify checks a user token and returns the user it names. The algorithm is pinned to HS256
// (no "none", no key confusion), and an expiry is required.
func (a *Auth) Verify(token string) (string, error) {
	c, err := a.verify(token)
	return c.Subject, err
}

// verify returns all the token says: who, until when (for connections that outlive requests),
// and whether they are an admin.
func (a *Auth) verify(token string) (Claims, error) {
	if token == "" {
		return Claims{}, domain.Errorf(domain.CodeUnauthenticated, "this endpoint needs a user token")
	}
	timeChecks := []jwt.ParserOption{
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(30 * time.Second),
		jwt.WithTimeFunc(a.now),
	}
	claims, ok := a.verified.Get(token)
	var err error
	if ok {
		err = jwt.NewValidator(timeChecks...).Validate(claims)
	} else {
		_, err = jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return a.secret, nil },
			append(timeChecks, jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}))...)
	}
	if err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return Claims{}, domain.Errorf(domain.CodeUnauthenticated, "the token has expired")
		}
		return Claims{}, domain.Errorf(domain.CodeUnauthenticated, "invalid token")
	}
	if domain.ValidUserID(claims.Subject) != nil {
		return Claims{}, domain.Errorf(domain.CodeUnauthenticated, "the token's subject is not a valid user id")
	}
	if !ok {
		a.verified.Add(token, claims)
	}
	return claims, nil
}

// validServiceKey compares in constant time.
func (a *Auth) validServiceKey(key string) bool {
	return subtle.ConstantTimeCompare([]byte(key), a.serviceKey) == 1
}

func bearer(c echo.Context) (string, bool) {
	h := c.Request().Header.Get(echo.HeaderAuthorization)
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

const (
	userKey  = "chatd.user"
	adminKey = "chatd.admin"
)

func (s *server) requireServiceKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		key, ok := bearer(c)
		if !ok || !s.Auth.validServiceKey(key) {
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="chatd service"`)
			return domain.Errorf(domain.CodeUnauthenticated, "this endpoint needs the service key as a Bearer token")
		}
		return next(c)
	}
}

func (s *server) requireUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		tok, ok := bearer(c)
		if !ok {
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="chatd"`)
			return domain.Errorf(domain.CodeUnauthenticated, "this endpoint needs a user token as a Bearer token")
		}
		claims, err := s.Auth.verify(tok)
		if err != nil {
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="chatd", error="invalid_token"`)
			return err
		}
		c.Set(userKey, claims.Subject)
		c.Set(adminKey, claims.Admin)
		return next(c)
	}
}

// requireAdmin runs after requireUser: the token must carry the admin claim.
func (s *server) requireAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if admin, _ := c.Get(adminKey).(bool); !admin {
			return domain.Errorf(domain.CodeForbidden, "this endpoint needs a token with the admin claim")
		}
		return next(c)
	}
}

func currentUser(c echo.Context) string { return c.Get(userKey).(string) }
