package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/rs/zerolog"
)

// Operators is what the API needs to authenticate callers and manage
// operator accounts; *backend.Service has it.
type Operators interface {
	ResolveToken(ctx context.Context, token string) (string, topics.Role, error)
	AuthenticateOperator(ctx context.Context, name, password string) (topics.Role, error)
	CreateOperator(ctx context.Context, name, password string, role topics.Role) (backend.Operator, error)
	Operators(ctx context.Context) ([]backend.Operator, error)
	DeleteOperator(ctx context.Context, name string) error
	CreateToken(ctx context.Context, name, label string, ttl time.Duration) (backend.Token, string, error)
	RevokeSecret(ctx context.Context, token string) error
	Tokens(ctx context.Context, name string) ([]backend.Token, error)
	RevokeToken(ctx context.Context, name, id string) error
}

var _ Operators = (*backend.Service)(nil)

// BootstrapName is the operator the bootstrap admin token
// (--admin-token) acts as in the audit trail, unless the request names
// someone in OperatorHeader.
const BootstrapName = "admin"

// Dashboard sessions: the dashboard signs in with a name and password
// and gets an expiring API token in an HttpOnly, SameSite=Strict cookie
// (Secure over TLS). A state change authenticated by the cookie must also
// carry CSRFHeader: a cross-site form cannot set a custom header, and
// SameSite=Strict already keeps the cookie off cross-site requests.
const (
	SessionCookie = "ecowatt_session"
	CSRFHeader    = "X-Ecowatt-Csrf"
	SessionTTL    = 12 * time.Hour
)

// access is who may call a route.
type access struct {
	min  topics.Role // minimum role; public: no token needed
	self bool        // the operator named by {name} may too, whatever its role
}

// public marks a route that needs no token.
const public topics.Role = ""

// identity is the authenticated caller.
type identity struct {
	name      string // for the audit trail
	role      topics.Role
	bootstrap bool // the --admin-token, not a named account
}

type identityKey struct{}

func identityFrom(ctx context.Context) (identity, bool) {
	id, ok := ctx.Value(identityKey{}).(identity)
	return id, ok
}

// authMux is a ServeMux whose Handle looks each pattern up in routeAccess
// and wraps the handler to enforce it: a pattern without an entry panics at
// startup, so that no route is ever served without a role rule.
type authMux struct {
	*http.ServeMux
	a authenticator
}

func (m authMux) Handle(pattern string, h http.Handler) {
	acc, ok := routeAccess[pattern]
	if !ok {
		panic("httpapi: route " + pattern + " has no entry in routeAccess")
	}
	if acc.min != public {
		h = m.a.require(acc, h)
	}
	m.ServeMux.Handle(pattern, h)
}

// authenticator resolves bearer tokens to identities.
type authenticator struct {
	log       zerolog.Logger
	bootstrap [sha256.Size]byte
	hasBoot   bool
	ops       Operators // nil: only the bootstrap token
}

func newAuthenticator(log zerolog.Logger, bootstrapToken string, ops Operators) authenticator {
	return authenticator{log: log, bootstrap: sha256.Sum256([]byte(bootstrapToken)), hasBoot: bootstrapToken != "", ops: ops}
}

// authenticate finds who r comes from: the bootstrap admin token
// (compared in constant time, over its SHA-256 so length leaks nothing) or
// an operator's API token. Missing, unknown and revoked tokens are one
// CodeUnauthorized error.
func (a authenticator) authenticate(r *http.Request) (identity, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if r.Header.Get("Authorization") == "" {
		if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" {
			switch r.Method {
			case http.MethodGet, http.MethodHead:
			default:
				if r.Header.Get(CSRFHeader) == "" {
					return identity{}, backend.Errorf(backend.CodeForbidden, CSRFHeader, "a change made with the session cookie needs the %s header", CSRFHeader)
				}
			}
			tok, ok = c.Value, true
		}
	}
	if !ok || tok == "" {
		return identity{}, backend.Errorf(backend.CodeUnauthorized, "", "missing bearer token")
	}
	sum := sha256.Sum256([]byte(tok))
	if a.hasBoot && subtle.ConstantTimeCompare(sum[:], a.bootstrap[:]) == 1 {
		id := identity{name: BootstrapName, role: topics.RoleAdmin, bootstrap: true}
		// The shared token names no one; the header may, for the history.
		if op := r.Header.Get(OperatorHeader); op != "" {
			if topics.ValidateID(op) != nil {
				return identity{}, backend.Errorf(backend.CodeInvalid, OperatorHeader, "%s must be 1-64 characters of A-Z a-z 0-9 _ -", OperatorHeader)
			}
			id.name = op
		}
		return id, nil
	}
	if a.ops == nil || !strings.HasPrefix(tok, backend.TokenPrefix) {
		return identity{}, backend.Errorf(backend.CodeUnauthorized, "", "wrong or revoked bearer token")
	}
	name, role, err := a.ops.ResolveToken(r.Context(), tok)
	if err != nil {
		return identity{}, err
	}
	return identity{name: name, role: role}, nil
}

// require authenticates r (unless an outer handler did) and lets it
// through when the caller's role grants acc: 401 for no or a bad token,
// 403 for a role too low. The caller's name goes into the context for
// the audit trail (backend.WithOperator).
func (a authenticator) require(acc access, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := identityFrom(r.Context())
		if !ok {
			var err error
			if id, err = a.authenticate(r); err != nil {
				a.log.Debug().Err(err).Str("path", r.URL.Path).Str("remote", r.RemoteAddr).Msg("api request refused")
				writeError(w, a.log, err)
				return
			}
			ctx := context.WithValue(r.Context(), identityKey{}, id)
			r = r.WithContext(backend.WithOperator(ctx, id.name))
		}
		if !id.role.AtLeast(acc.min) && !(acc.self && !id.bootstrap && r.PathValue("name") == id.name) {
			writeError(w, a.log, backend.Errorf(backend.CodeForbidden, "",
				"%s %s needs the role %q; %q has %q", r.Method, r.URL.Path, acc.min, id.name, id.role))
			return
		}
		next.ServeHTTP(w, r)
	})
}
