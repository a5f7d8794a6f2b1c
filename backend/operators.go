package backend

import (
	"context"
	"errors"
	"fmt"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
)

// Operator roles.
const (
	RoleAdmin  = "admin"  // may change config, send commands, run rollouts
	RoleViewer = "viewer" // may watch events
)

// EnsureOperator creates operator name, or resets its password and role
// (the ECOWATT_OPERATOR=name:password bootstrap runs it at every start).
// Names follow the device ID rules; passwords are stored as bcrypt hashes.
func (s *Service) EnsureOperator(ctx context.Context, name, password, role string) error {
	if err := topics.ValidateID(name); err != nil {
		return &Error{Code: CodeInvalid, Field: "name", Message: "operator name must be 1-64 characters of A-Z a-z 0-9 _ -", Err: err}
	}
	if password == "" || len(password) > 72 {
		return Errorf(CodeInvalid, "password", "password must be 1-72 bytes")
	}
	if role != RoleAdmin && role != RoleViewer {
		return Errorf(CodeInvalid, "role", "role must be %q or %q", RoleAdmin, RoleViewer)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), s.cfg.BcryptCost)
	if err != nil {
		return fmt.Errorf("ensure operator %s: %w", name, err)
	}
	key := s.keys.Operator(name)
	now := s.now().UnixMilli()
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSetNX(ctx, key, "created_at", now)
		p.HSet(ctx, key, "name", name, "hash", hash, "role", role, "updated_at", now)
		return nil
	})
	if err != nil {
		return unavailable("ensure operator "+name, err)
	}
	s.log.Info().Str("operator", name).Str("role", role).Msg("operator account set")
	return nil
}

// AuthenticateOperator checks an operator's password and returns its role.
// A wrong name and a wrong password give the same CodeUnauthorized error
// and take the same time.
func (s *Service) AuthenticateOperator(ctx context.Context, name, password string) (string, error) {
	hash, role := s.dummyHash, ""
	known := false
	if topics.ValidateID(name) == nil {
		h, err := s.rdb.HMGet(ctx, s.keys.Operator(name), "hash", "role").Result()
		if err != nil {
			return "", unavailable("authenticate operator", err)
		}
		if hs, ok := h[0].(string); ok {
			hash, known = []byte(hs), true
			role, _ = h[1].(string)
		}
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	if err != nil && !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
		s.log.Error().Err(err).Str("operator", name).Msg("operator hash unreadable")
	}
	if !known || err != nil || (role != RoleAdmin && role != RoleViewer) {
		return "", Errorf(CodeUnauthorized, "", "wrong operator name or password")
	}
	return role, nil
}

// OperatorRole returns the role of an existing operator.
func (s *Service) OperatorRole(ctx context.Context, name string) (string, error) {
	if topics.ValidateID(name) != nil {
		return "", Errorf(CodeNotFound, "name", "no operator %q", name)
	}
	role, err := s.rdb.HGet(ctx, s.keys.Operator(name), "role").Result()
	if err != nil {
		if errors.Is(err, redis.Nil) {
			return "", Errorf(CodeNotFound, "name", "no operator %q", name)
		}
		return "", unavailable("operator role", err)
	}
	return role, nil
}
