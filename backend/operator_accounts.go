package backend

// Operator account management (create, list, delete) and API tokens. They
// are Service methods, not Accounts ones: the broker needs only
// EnsureOperator, AuthenticateOperator and OperatorRole (operators.go);
// these serve the HTTP API and the CLI, and CreateToken needs the
// Service's randomness. The accounts' settings (bcryptCost) come from the
// embedded Accounts.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
)

// Operator is an operator account as listed; the password hash never
// leaves the backend.
type Operator struct {
	Name      string      `json:"name"`
	Role      topics.Role `json:"role"`
	CreatedAt time.Time   `json:"created_at"`
}

// Token is an API token as listed: never its secret, which only
// CreateToken returns, once.
type Token struct {
	ID        string     `json:"id"`
	Operator  string     `json:"operator"`
	Label     string     `json:"label,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	LastUsed  *time.Time `json:"last_used,omitempty"` // to the minute (see tokenTouchEvery)
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// Limits of operator accounts.
const (
	// MaxTokens bounds an operator's live API tokens.
	MaxTokens = 20
	// TokenPrefix starts every API token, so that a leaked one is easy
	// to recognise (and to scan for in repositories).
	TokenPrefix = "ewt_"
	// tokenTouchEvery is how stale a token's last_used may get: a request
	// writes it only when it is older, so reading the API costs no write
	// per request.
	tokenTouchEvery = time.Minute
)

// TokenDigest is how an API token is stored: the hex SHA-256 of the whole
// token. The token holds 256 random bits, so a fast hash is enough (there is
// nothing to guess); bcrypt would only cost every request.
func TokenDigest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// createOperatorScript creates an account only when the name is free.
// KEYS: op hash, operators index. ARGV: name, hash, role, now.
var createOperatorScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'hash', ARGV[2], 'role', ARGV[3], 'created_at', ARGV[4], 'updated_at', ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
`)

// CreateOperator creates operator name with a bcrypt-hashed password;
// CodeConflict when the name is taken by an operator or a device.
func (s *Service) CreateOperator(ctx context.Context, name, password string, role topics.Role) (Operator, error) {
	if err := topics.ValidateID(name); err != nil {
		return Operator{}, &Error{Code: CodeInvalid, Field: "name", Message: "operator name must be 1-64 characters of A-Z a-z 0-9 _ -", Err: err}
	}
	if password == "" || len(password) > 72 {
		return Operator{}, Errorf(CodeInvalid, "password", "password must be 1-72 bytes")
	}
	if err := validRole(role); err != nil {
		return Operator{}, err
	}
	const clash = "operator name %q is a device's id; devices and operators need distinct names"
	if err := s.nameFree(ctx, s.keys.Device(name), "name", clash, name); err != nil {
		return Operator{}, err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), s.bcryptCost)
	if err != nil {
		return Operator{}, fmt.Errorf("create operator %s: %w", name, err)
	}
	now := s.now().UTC()
	ok, err := createOperatorScript.Run(ctx, s.rdb, []string{s.keys.Operator(name), s.keys.Operators()},
		name, hash, string(role), now.UnixMilli()).Bool()
	if err != nil {
		return Operator{}, Unavailable("create operator "+name, err)
	}
	if !ok {
		return Operator{}, Errorf(CodeConflict, "name", "operator %q exists", name)
	}
	// A device may have been provisioned since the check (see nameFree).
	if err := s.nameFree(ctx, s.keys.Device(name), "name", clash, name); err != nil {
		if _, derr := deleteOperatorScript.Run(ctx, s.rdb, s.opsKeys(name), s.opsArgs(name, true)...).Result(); derr != nil {
			return Operator{}, Unavailable("create operator "+name+": undo", derr)
		}
		return Operator{}, err
	}
	s.log.Info().Str("operator", name).Str("role", string(role)).Str("by", OperatorFrom(ctx)).Msg("operator created")
	return Operator{Name: name, Role: role, CreatedAt: now.Truncate(time.Millisecond)}, nil
}

// Operators lists every operator account by name. Operators are people,
// a few dozen at most, so the list is not paged.
func (s *Service) Operators(ctx context.Context) ([]Operator, error) {
	names, err := s.rdb.ZRange(ctx, s.keys.Operators(), 0, -1).Result()
	if err != nil {
		return nil, Unavailable("list operators", err)
	}
	cmds := make([]*redis.SliceCmd, len(names))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, n := range names {
			cmds[i] = p.HMGet(ctx, s.keys.Operator(n), "role", "created_at")
		}
		return nil
	})
	if err != nil {
		return nil, Unavailable("list operators", err)
	}
	out := make([]Operator, 0, len(names))
	for i, n := range names {
		v := cmds[i].Val()
		role, _ := v[0].(string)
		if role == "" {
			continue // deleted since the index was read
		}
		op := Operator{Name: n, Role: topics.Role(role)}
		if t := msTime(str(v[1])); t != nil {
			op.CreatedAt = *t
		}
		out = append(out, op)
	}
	return out, nil
}

// deleteOperatorScript deletes an account and its tokens, refusing to
// delete the last admin (unless ARGV[4] is "force", for undoing a
// creation). KEYS: op hash, operators index, token map. ARGV: op key
// prefix, token key prefix, name, force.
var deleteOperatorScript = redis.NewScript(`
local role = redis.call('HGET', KEYS[1], 'role')
if not role then return 'missing' end
if role == 'admin' and ARGV[4] ~= 'force' then
  local others = false
  for _, n in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if n ~= ARGV[3] and redis.call('HGET', ARGV[1] .. n, 'role') == 'admin' then others = true; break end
  end
  if not others then return 'last_admin' end
end
for _, sha in ipairs(redis.call('HVALS', KEYS[3])) do redis.call('DEL', ARGV[2] .. sha) end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[3])
return 'ok'
`)

func (s *Service) opsKeys(name string) []string {
	return []string{s.keys.Operator(name), s.keys.Operators(), s.keys.OperatorTokens(name)}
}

func (s *Service) opsArgs(name string, force bool) []any {
	f := ""
	if force {
		f = "force"
	}
	return []any{s.keys.Operator(""), s.keys.Token(""), name, f}
}

// DeleteOperator deletes an operator account and revokes its tokens at
// once. The last admin account cannot be deleted (CodeConflict): someone
// must be left who can manage accounts.
func (s *Service) DeleteOperator(ctx context.Context, name string) error {
	if topics.ValidateID(name) != nil {
		return Errorf(CodeNotFound, "name", "no operator %q", name)
	}
	res, err := deleteOperatorScript.Run(ctx, s.rdb, s.opsKeys(name), s.opsArgs(name, false)...).Text()
	if err != nil {
		return Unavailable("delete operator "+name, err)
	}
	switch res {
	case "missing":
		return Errorf(CodeNotFound, "name", "no operator %q", name)
	case "last_admin":
		return Errorf(CodeConflict, "name", "operator %q is the last admin; create another admin first", name)
	}
	s.log.Info().Str("operator", name).Str("by", OperatorFrom(ctx)).Msg("operator deleted")
	return nil
}

// createTokenScript stores a token's digest, first dropping the map
// entries of tokens that expired (sessions).
// KEYS: op hash, token map, token hash. ARGV: id, digest, now, max, name,
// label, ttl ms (0: none), token key prefix.
var createTokenScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local m = redis.call('HGETALL', KEYS[2])
for i = 1, #m, 2 do
  if redis.call('EXISTS', ARGV[8] .. m[i+1]) == 0 then redis.call('HDEL', KEYS[2], m[i]) end
end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return 'full' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], 'operator', ARGV[5], 'id', ARGV[1], 'created_at', ARGV[3], 'label', ARGV[6])
if tonumber(ARGV[7]) > 0 then
  redis.call('HSET', KEYS[3], 'expires_at', tonumber(ARGV[3]) + tonumber(ARGV[7]))
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
return 'ok'
`)

// CreateToken makes an API token for operator name and returns it with
// its secret, the only time the secret is seen: only its digest is stored.
// A ttl > 0 makes it expire (dashboard sessions); 0 never.
func (s *Service) CreateToken(ctx context.Context, name, label string, ttl time.Duration) (Token, string, error) {
	if topics.ValidateID(name) != nil {
		return Token{}, "", Errorf(CodeNotFound, "name", "no operator %q", name)
	}
	if len(label) > 64 || strings.ContainsFunc(label, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return Token{}, "", Errorf(CodeInvalid, "label", "label must be at most 64 printable characters")
	}
	var raw [8 + 32]byte
	if _, err := io.ReadFull(s.random, raw[:]); err != nil {
		return Token{}, "", fmt.Errorf("create token: %w", err)
	}
	id := hex.EncodeToString(raw[:8])
	secret := TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[8:])
	digest := TokenDigest(secret)
	now := s.now().UTC()
	res, err := createTokenScript.Run(ctx, s.rdb,
		[]string{s.keys.Operator(name), s.keys.OperatorTokens(name), s.keys.Token(digest)},
		id, digest, now.UnixMilli(), MaxTokens, name, label, ttl.Milliseconds(), s.keys.Token("")).Text()
	if err != nil {
		return Token{}, "", Unavailable("create token", err)
	}
	switch res {
	case "missing":
		return Token{}, "", Errorf(CodeNotFound, "name", "no operator %q", name)
	case "full":
		return Token{}, "", Errorf(CodeConflict, "", "operator %q has %d tokens; revoke one first", name, MaxTokens)
	}
	s.log.Info().Str("operator", name).Str("token", id).Str("by", OperatorFrom(ctx)).Msg("api token created")
	t := Token{ID: id, Operator: name, Label: label, CreatedAt: now.Truncate(time.Millisecond)}
	if ttl > 0 {
		exp := t.CreatedAt.Add(ttl)
		t.ExpiresAt = &exp
	}
	return t, secret, nil
}

// Tokens lists operator name's tokens, without their secrets.
func (s *Service) Tokens(ctx context.Context, name string) ([]Token, error) {
	if _, err := s.OperatorRole(ctx, name); err != nil {
		return nil, err
	}
	m, err := s.rdb.HGetAll(ctx, s.keys.OperatorTokens(name)).Result()
	if err != nil {
		return nil, Unavailable("list tokens", err)
	}
	ids := make([]string, 0, len(m))
	cmds := make([]*redis.SliceCmd, 0, len(m))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for id, digest := range m {
			ids = append(ids, id)
			cmds = append(cmds, p.HMGet(ctx, s.keys.Token(digest), "created_at", "last_used", "label", "expires_at"))
		}
		return nil
	})
	if err != nil {
		return nil, Unavailable("list tokens", err)
	}
	out := make([]Token, 0, len(ids))
	for i, id := range ids {
		v := cmds[i].Val()
		c := msTime(str(v[0]))
		if c == nil {
			continue // expired
		}
		t := Token{ID: id, Operator: name, Label: str(v[2]), LastUsed: msTime(str(v[1])), ExpiresAt: msTime(str(v[3])), CreatedAt: *c}
		out = append(out, t)
	}
	sortTokens(out)
	return out, nil
}

// revokeTokenScript deletes one token. KEYS: token map. ARGV: id, token key prefix.
var revokeTokenScript = redis.NewScript(`
local digest = redis.call('HGET', KEYS[1], ARGV[1])
if not digest then return 0 end
redis.call('DEL', ARGV[2] .. digest)
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
`)

// RevokeToken deletes token id of operator name; the next request made
// with it is refused.
func (s *Service) RevokeToken(ctx context.Context, name, id string) error {
	if topics.ValidateID(name) != nil {
		return Errorf(CodeNotFound, "name", "no operator %q", name)
	}
	ok, err := revokeTokenScript.Run(ctx, s.rdb, []string{s.keys.OperatorTokens(name)}, id, s.keys.Token("")).Bool()
	if err != nil {
		return Unavailable("revoke token", err)
	}
	if !ok {
		return Errorf(CodeNotFound, "id", "operator %q has no token %q", name, id)
	}
	s.log.Info().Str("operator", name).Str("token", id).Str("by", OperatorFrom(ctx)).Msg("api token revoked")
	return nil
}

// revokeSecretScript deletes the token a secret names (signing out).
// KEYS: token hash. ARGV: token map key prefix.
var revokeSecretScript = redis.NewScript(`
local t = redis.call('HMGET', KEYS[1], 'operator', 'id')
if not t[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HDEL', ARGV[1] .. t[1], t[2])
return 1
`)

// RevokeSecret revokes the token whose secret is given, if it exists.
func (s *Service) RevokeSecret(ctx context.Context, token string) error {
	if err := revokeSecretScript.Run(ctx, s.rdb, []string{s.keys.Token(TokenDigest(token))}, s.keys.OperatorTokens("")).Err(); err != nil {
		return Unavailable("revoke token", err)
	}
	return nil
}

// resolveTokenScript finds a token's operator and role, and refreshes
// last_used when it is stale. KEYS: token hash. ARGV: op key prefix, now,
// touch interval (ms).
var resolveTokenScript = redis.NewScript(`
local t = redis.call('HMGET', KEYS[1], 'operator', 'last_used')
if not t[1] then return false end
local role = redis.call('HGET', ARGV[1] .. t[1], 'role')
if not role then return false end
if (not t[2]) or (tonumber(ARGV[2]) - tonumber(t[2]) >= tonumber(ARGV[3])) then
  redis.call('HSET', KEYS[1], 'last_used', ARGV[2])
end
return {t[1], role}
`)

// ResolveToken returns the operator and role an API token stands for;
// CodeUnauthorized for a token that is unknown or revoked, or whose
// operator is gone.
func (s *Service) ResolveToken(ctx context.Context, token string) (string, topics.Role, error) {
	if !strings.HasPrefix(token, TokenPrefix) {
		return "", "", Errorf(CodeUnauthorized, "", "unknown or revoked token")
	}
	v, err := resolveTokenScript.Run(ctx, s.rdb, []string{s.keys.Token(TokenDigest(token))},
		s.keys.Operator(""), s.now().UnixMilli(), tokenTouchEvery.Milliseconds()).StringSlice()
	if err == redis.Nil {
		return "", "", Errorf(CodeUnauthorized, "", "unknown or revoked token")
	}
	if err != nil {
		return "", "", Unavailable("resolve token", err)
	}
	if len(v) != 2 || !topics.Role(v[1]).Valid() {
		return "", "", Errorf(CodeUnauthorized, "", "unknown or revoked token")
	}
	return v[0], topics.Role(v[1]), nil
}

func str(v any) string { s, _ := v.(string); return s }

func sortTokens(ts []Token) {
	slices.SortFunc(ts, func(a, b Token) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}
