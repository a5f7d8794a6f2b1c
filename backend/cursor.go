package backend

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/redis/go-redis/v9"
)

// A page cursor is base64url(JSON position) "." base64url(HMAC-SHA256
// truncated to 16 bytes). The position names the last row of the page
// (its ID and sort key) and a hash of the query (selector and sort), so a
// cursor is opaque, cannot be edited, and is refused for another query.
// The HMAC key is random, created once in Redis, so every replica accepts
// every other's cursors.
type cursorPos struct {
	Query    string `json:"q"`
	ID       string `json:"id"`
	LastSeen int64  `json:"ls"`
	Firmware string `json:"fw,omitempty"`
}

const maxCursorLen = 1024

func queryHash(binding string) string {
	sum := sha256.Sum256([]byte(binding))
	return hex.EncodeToString(sum[:8])
}

func (s *Service) cursorKey(ctx context.Context) ([]byte, error) {
	k, err := s.rdb.Get(ctx, s.keys.CursorKey()).Bytes()
	if err == nil && len(k) == 32 {
		return k, nil
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, Unavailable("cursor key", err)
	}
	fresh := make([]byte, 32)
	if _, err := io.ReadFull(s.random, fresh); err != nil {
		return nil, fmt.Errorf("cursor key: %w", err)
	}
	// SETNX: the first replica's key wins; everyone reads it back.
	if err := s.rdb.SetNX(ctx, s.keys.CursorKey(), fresh, 0).Err(); err != nil {
		return nil, Unavailable("cursor key", err)
	}
	k, err = s.rdb.Get(ctx, s.keys.CursorKey()).Bytes()
	if err != nil {
		return nil, Unavailable("cursor key", err)
	}
	return k, nil
}

func (s *Service) sealCursor(ctx context.Context, r row, binding string) (string, error) {
	key, err := s.cursorKey(ctx)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(cursorPos{Query: queryHash(binding), ID: r.dev.ID, LastSeen: lastSeenMs(r), Firmware: r.dev.FirmwareVersion})
	if err != nil {
		return "", fmt.Errorf("seal cursor: %w", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write(b)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(b) + "." + enc.EncodeToString(m.Sum(nil)[:16]), nil
}

func (s *Service) openCursor(ctx context.Context, c, binding string) (row, error) {
	bad := Errorf(CodeInvalid, "cursor", "cursor is malformed or was altered; start again without one")
	if len(c) > maxCursorLen {
		return row{}, bad
	}
	body, mac, ok := strings.Cut(c, ".")
	enc := base64.RawURLEncoding
	b, err1 := enc.DecodeString(body)
	got, err2 := enc.DecodeString(mac)
	if !ok || err1 != nil || err2 != nil {
		return row{}, bad
	}
	key, err := s.cursorKey(ctx)
	if err != nil {
		return row{}, err
	}
	m := hmac.New(sha256.New, key)
	m.Write(b)
	if !hmac.Equal(got, m.Sum(nil)[:16]) {
		return row{}, bad
	}
	var p cursorPos
	if err := json.Unmarshal(b, &p); err != nil {
		return row{}, bad
	}
	if p.Query != queryHash(binding) {
		return row{}, Errorf(CodeInvalid, "cursor", "cursor belongs to another query (selector or sort changed); start again without one")
	}
	return cursorRow(p.ID, p.LastSeen, p.Firmware), nil
}
