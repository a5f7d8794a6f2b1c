package jobs

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"github.com/ecowatt/ecowatt/backend"
)

// DeviceRow is one device of a job.
type DeviceRow struct {
	Device   string     `json:"device"`
	State    string     `json:"state"`
	Reason   string     `json:"reason,omitempty"`
	IssuedAt *time.Time `json:"issued_at,omitempty"`
	// Ref is the part's handle: the config version, the command ID or
	// the firmware version.
	Ref string `json:"ref,omitempty"`
}

// DevicePage is one page of a job's devices, in ID order.
type DevicePage struct {
	Devices []DeviceRow `json:"devices"`
	Total   int         `json:"total"` // devices in the state asked for (all when none)
	Next    string      `json:"next_cursor,omitempty"`
}

// Devices returns one page of job jid's devices, those in state when
// set. A cursor is bound to its job and state: one from another query,
// or altered, is CodeInvalid.
func (s *Service) Devices(ctx context.Context, jid, state, cursor string, limit int) (DevicePage, error) {
	if limit == 0 {
		limit = DefaultPageSize
	}
	if limit < 1 || limit > MaxPageSize {
		return DevicePage{}, invalid("limit", "limit must be 1-%d", MaxPageSize)
	}
	if state != "" && !slices.Contains(DeviceStates, state) {
		return DevicePage{}, invalid("state", "state must be one of %s", strings.Join(DeviceStates, ", "))
	}
	if _, err := s.load(ctx, jid); err != nil {
		return DevicePage{}, err
	}
	key, err := s.cursorKey(ctx)
	if err != nil {
		return DevicePage{}, err
	}
	binding := jid + "\x00" + state
	after := ""
	if cursor != "" {
		if after, err = openCursor(key, cursor, binding); err != nil {
			return DevicePage{}, err
		}
	}
	k := s.jk(jid)
	all, err := s.rdb.HGetAll(ctx, k.devs).Result()
	if err != nil {
		return DevicePage{}, backend.Unavailable("job "+jid+": devices", err)
	}
	ids := make([]string, 0, len(all))
	for d, st := range all {
		if state == "" || st == state {
			ids = append(ids, d)
		}
	}
	slices.Sort(ids)
	page := DevicePage{Devices: []DeviceRow{}, Total: len(ids)}
	start, _ := slices.BinarySearch(ids, after)
	if after != "" && start < len(ids) && ids[start] == after {
		start++
	}
	end := min(start+limit, len(ids))
	sel := ids[start:end]
	if len(sel) == 0 {
		return page, nil
	}
	p := s.rdb.Pipeline()
	w, a, r := p.HMGet(ctx, k.why, sel...), p.HMGet(ctx, k.at, sel...), p.HMGet(ctx, k.ref, sel...)
	if _, err := p.Exec(ctx); err != nil {
		return DevicePage{}, backend.Unavailable("job "+jid+": devices", err)
	}
	why, at, ref := w.Val(), a.Val(), r.Val()
	for i, d := range sel {
		row := DeviceRow{Device: d, State: all[d]}
		row.Reason, _ = why[i].(string)
		row.Ref, _ = ref[i].(string)
		if v, _ := at[i].(string); v != "" {
			row.IssuedAt = msTime(v)
		}
		page.Devices = append(page.Devices, row)
	}
	if end < len(ids) {
		page.Next = sealCursor(key, sel[len(sel)-1], binding)
	}
	return page, nil
}

// cursorKey is the HMAC key of device-page cursors, made once in Redis so
// every replica accepts every other's cursors.
func (s *Service) cursorKey(ctx context.Context) ([]byte, error) {
	k := s.keys.Global("jobs:cursorkey")
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := s.rdb.SetNX(ctx, k, hex.EncodeToString(b), 0).Err(); err != nil {
		return nil, backend.Unavailable("jobs: cursor key", err)
	}
	v, err := s.rdb.Get(ctx, k).Result()
	if err != nil {
		return nil, backend.Unavailable("jobs: cursor key", err)
	}
	return hex.DecodeString(v)
}

func mac(key []byte, pos, binding string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(binding + "\x00" + pos))
	return m.Sum(nil)[:16]
}

func sealCursor(key []byte, pos, binding string) string {
	e := base64.RawURLEncoding
	return e.EncodeToString([]byte(pos)) + "." + e.EncodeToString(mac(key, pos, binding))
}

func openCursor(key []byte, c, binding string) (string, error) {
	bad := invalid("cursor", "cursor is not one this query returned (from another job or state, or altered)")
	p, sig, ok := strings.Cut(c, ".")
	if !ok {
		return "", bad
	}
	e := base64.RawURLEncoding
	pos, err1 := e.DecodeString(p)
	got, err2 := e.DecodeString(sig)
	if err1 != nil || err2 != nil || !hmac.Equal(got, mac(key, string(pos), binding)) {
		return "", bad
	}
	return string(pos), nil
}
