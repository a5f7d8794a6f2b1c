package backend

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
)

// validRole checks a role given by a caller.
func validRole(role topics.Role) error {
	if !role.Valid() {
		return Errorf(CodeInvalid, "role", "role must be %q, %q or %q", topics.RoleViewer, topics.RoleOperator, topics.RoleAdmin)
	}
	return nil
}

// EnsureOperator creates operator name, or resets its password and role
// (the ECOWATT_OPERATOR=name:password bootstrap runs it at every start).
// Names follow the device ID rules and must not be a device's ID
// (CodeConflict); passwords are stored as bcrypt hashes.
func (a *Accounts) EnsureOperator(ctx context.Context, name, password string, role topics.Role) error {
	if err := topics.ValidateID(name); err != nil {
		return &Error{Code: CodeInvalid, Field: "name", Message: "operator name must be 1-64 characters of A-Z a-z 0-9 _ -", Err: err}
	}
	if password == "" || len(password) > 72 {
		return Errorf(CodeInvalid, "password", "password must be 1-72 bytes")
	}
	if err := validRole(role); err != nil {
		return err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), a.bcryptCost)
	if err != nil {
		return fmt.Errorf("ensure operator %s: %w", name, err)
	}
	const clash = "operator name %q is a device's id; devices and operators need distinct names"
	if err := a.nameFree(ctx, a.keys.Device(name), "name", clash, name); err != nil {
		return err
	}
	key := a.keys.Operator(name)
	now := a.now().UnixMilli()
	var created *redis.BoolCmd
	_, err = a.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		created = p.HSetNX(ctx, key, "created_at", now)
		p.HSet(ctx, key, "name", name, "hash", hash, "role", string(role), "updated_at", now)
		p.ZAdd(ctx, a.keys.Operators(), redis.Z{Member: name})
		return nil
	})
	if err != nil {
		return Unavailable("ensure operator "+name, err)
	}
	// A device may have been provisioned since the check (see nameFree);
	// an account that existed before stays (that device undoes itself).
	if err := a.nameFree(ctx, a.keys.Device(name), "name", clash, name); err != nil {
		if created.Val() {
			_, derr := a.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Del(ctx, key)
				p.ZRem(ctx, a.keys.Operators(), name)
				return nil
			})
			if derr != nil {
				return Unavailable("ensure operator "+name+": undo", derr)
			}
		}
		return err
	}
	a.log.Info().Str("operator", name).Str("role", string(role)).Msg("operator account set")
	return nil
}

// AuthenticateOperator checks an operator's password and returns its role.
// An unknown name is a CodeNotFound error found without bcrypt, so that
// logins under made-up names cost an attacker's CPU, not ours (the broker
// throttles the rest); this tells a name that exists from one that does
// not, which operator names, like device IDs, are not meant to hide. A
// wrong password is CodeUnauthorized.
func (a *Accounts) AuthenticateOperator(ctx context.Context, name, password string) (topics.Role, error) {
	if topics.ValidateID(name) != nil {
		return "", Errorf(CodeNotFound, "name", "no operator %q", name)
	}
	h, err := a.rdb.HMGet(ctx, a.keys.Operator(name), "hash", "role").Result()
	if err != nil {
		return "", Unavailable("authenticate operator", err)
	}
	hs, ok := h[0].(string)
	if !ok {
		return "", Errorf(CodeNotFound, "name", "no operator %q", name)
	}
	hash := []byte(hs)
	rs, _ := h[1].(string)
	role := topics.Role(rs)
	if !a.verified.has(hash, password) {
		a.passwordChecks.Inc()
		err = bcrypt.CompareHashAndPassword(hash, []byte(password))
		if err == nil {
			a.verified.add(hash, password)
		}
	}
	if err != nil && !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
		a.log.Error().Err(err).Str("operator", name).Msg("operator hash unreadable")
	}
	if err != nil || !role.Valid() {
		return "", Errorf(CodeUnauthorized, "", "wrong operator name or password")
	}
	return role, nil
}

// OperatorRole returns the role of an existing operator.
func (a *Accounts) OperatorRole(ctx context.Context, name string) (topics.Role, error) {
	if topics.ValidateID(name) != nil {
		return "", Errorf(CodeNotFound, "name", "no operator %q", name)
	}
	role, err := a.rdb.HGet(ctx, a.keys.Operator(name), "role").Result()
	if err != nil {
		if errors.Is(err, redis.Nil) {
			return "", Errorf(CodeNotFound, "name", "no operator %q", name)
		}
		return "", Unavailable("operator role", err)
	}
	return topics.Role(role), nil
}

// verifiedPasswords remembers (stored hash, password) pairs bcrypt has
// already accepted, so that an operator's client reconnecting does not pay
// a bcrypt comparison (tens of milliseconds, seconds under -race) each
// time. The key binds the stored hash: a changed password misses. Only
// digests are kept, never passwords.
type verifiedPasswords struct {
	mu   sync.Mutex // guards seen
	seen map[[sha256.Size]byte]struct{}
}

const maxVerifiedPasswords = 4096

func verifiedKey(hash []byte, password string) [sha256.Size]byte {
	h := sha256.New()
	h.Write(hash)
	h.Write([]byte{0})
	h.Write([]byte(password))
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (v *verifiedPasswords) has(hash []byte, password string) bool {
	k := verifiedKey(hash, password)
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.seen[k]
	return ok
}

func (v *verifiedPasswords) add(hash []byte, password string) {
	k := verifiedKey(hash, password)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen == nil || len(v.seen) >= maxVerifiedPasswords {
		v.seen = make(map[[sha256.Size]byte]struct{})
	}
	v.seen[k] = struct{}{}
}
