package backend

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

func testGauge(t *testing.T, h *harness, name string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestProvision(t *testing.T) {
	h := newHarness(t)
	psk, err := h.s.Provision(h.ctx, "dev-1_A")
	if err != nil {
		t.Fatal(err)
	}
	if len(psk) != envelope.KeySize {
		t.Fatalf("psk is %d bytes", len(psk))
	}
	k, err := h.s.DeviceKeys(h.ctx, "dev-1_A")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := envelope.DeriveKeys(psk)
	if !k.Equal(&want) {
		t.Fatal("DeviceKeys does not match the provisioned PSK")
	}

	for _, tc := range []struct {
		name, id, code string
	}{
		{"empty ID", "", CodeInvalid},
		{"ID too long", strings.Repeat("a", 65), CodeInvalid},
		{"slash in ID", "a/b", CodeInvalid},
		{"wildcard in ID", "a+", CodeInvalid},
		{"hash tag in ID", "{dev:x}", CodeInvalid},
		{"space in ID", "a b", CodeInvalid},
		{"non-ASCII ID", "été", CodeInvalid},
		{"duplicate", "dev-1_A", CodeConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			before := h.snapshot()
			_, err := h.s.Provision(h.ctx, tc.id)
			if ErrorCode(err) != tc.code {
				t.Fatalf("Provision(%q) = %v, want code %s", tc.id, err, tc.code)
			}
			if _, field := ErrorMessage(err); field != "id" {
				t.Fatalf("field = %q, want id", field)
			}
			h.assertUnchanged(before)
		})
	}
	// The duplicate did not replace the key.
	k2, err := h.s.DeviceKeys(context.Background(), "dev-1_A")
	if err != nil || !k2.Equal(&want) {
		t.Fatalf("key changed by duplicate provisioning: %v", err)
	}

	t.Run("unknown device", func(t *testing.T) {
		if _, err := h.s.Device(h.ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Device = %v, want ErrNotFound", err)
		}
		if _, err := h.s.DeviceKeys(h.ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("DeviceKeys = %v, want ErrNotFound", err)
		}
		if _, err := h.s.DeviceKeys(h.ctx, "bad/id"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("DeviceKeys(invalid) = %v, want ErrNotFound", err)
		}
	})
}

func TestKeysEncryptedAtRest(t *testing.T) {
	h := newHarness(t)
	var psks [][]byte
	for _, id := range []string{"k1", "k2", "k3", "k4"} {
		psk, err := h.s.Provision(h.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		psks = append(psks, psk)
	}
	var dump bytes.Buffer
	for _, key := range h.rdbKeys() {
		v, err := h.rdb.Dump(h.ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		dump.WriteString(v)
		if typ := h.rdb.Type(h.ctx, key).Val(); typ == "string" {
			dump.WriteString(h.rdb.Get(h.ctx, key).Val())
		}
		for _, v := range h.rdb.HGetAll(h.ctx, key).Val() {
			dump.WriteString(v)
		}
	}
	for i, psk := range psks {
		for _, form := range [][]byte{
			psk, []byte(hex.EncodeToString(psk)), []byte(strings.ToUpper(hex.EncodeToString(psk))),
			[]byte(base64.StdEncoding.EncodeToString(psk)), psk[:16],
		} {
			if bytes.Contains(dump.Bytes(), form) {
				t.Fatalf("key %d found in Redis in plain form %q", i, form)
			}
		}
	}
	// A sealed key copied onto another device does not open there.
	sealed := h.rdb.Get(h.ctx, h.s.keys.PSK("k1")).Val()
	h.rdb.Set(h.ctx, h.s.keys.PSK("k2"), sealed, 0)
	h.s.cache.forget("k2")
	if _, err := h.s.DeviceKeys(h.ctx, "k2"); err == nil {
		t.Fatal("a sealed key moved to another device opened")
	}
}

func (h *harness) rdbKeys() []string {
	return redistest.Keys(h.t, h.rdb, h.prefix) // every master on a Cluster
}

func TestOperators(t *testing.T) {
	h := newHarness(t)
	if err := h.s.EnsureOperator(h.ctx, "alice", "s3cret-pass", topics.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	role, err := h.s.AuthenticateOperator(h.ctx, "alice", "s3cret-pass")
	if err != nil || role != topics.RoleAdmin {
		t.Fatalf("AuthenticateOperator = %q, %v", role, err)
	}
	// An unknown name is not found, and costs no bcrypt (issue 18).
	for _, tc := range []struct {
		name, user, pass string
		want             error
	}{
		{"wrong password", "alice", "wrong", ErrUnauthorized},
		{"unknown operator", "bob", "s3cret-pass", ErrNotFound},
		{"empty password", "alice", "", ErrUnauthorized},
		{"invalid name", "a/b", "x", ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := h.s.AuthenticateOperator(h.ctx, tc.user, tc.pass); !errors.Is(err, tc.want) {
				t.Fatalf("AuthenticateOperator = %v, want %v", err, tc.want)
			}
		})
	}
	for _, tc := range []struct{ name, user, pass, role, field string }{
		{"bad role", "bob", "pw", "root", "role"},
		{"bad name", "b b", "pw", string(topics.RoleViewer), "name"},
		{"empty password", "bob", "", string(topics.RoleViewer), "password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			before := h.snapshot()
			err := h.s.EnsureOperator(h.ctx, tc.user, tc.pass, topics.Role(tc.role))
			if _, field := ErrorMessage(err); ErrorCode(err) != CodeInvalid || field != tc.field {
				t.Fatalf("EnsureOperator = %v, want invalid %s", err, tc.field)
			}
			h.assertUnchanged(before)
		})
	}
	// Re-running the bootstrap resets the password and role.
	if err := h.s.EnsureOperator(h.ctx, "alice", "new-pass", topics.RoleViewer); err != nil {
		t.Fatal(err)
	}
	if role, err := h.s.AuthenticateOperator(h.ctx, "alice", "new-pass"); err != nil || role != topics.RoleViewer {
		t.Fatalf("after reset: %q, %v", role, err)
	}
	if _, err := h.s.AuthenticateOperator(h.ctx, "alice", "s3cret-pass"); err == nil {
		t.Fatal("old password still works")
	}
	if v := h.rdb.HGet(h.ctx, h.s.keys.Operator("alice"), "hash").Val(); strings.Contains(v, "new-pass") || !strings.HasPrefix(v, "$2") {
		t.Fatalf("operator hash %q is not bcrypt", v)
	}
}

// TestKeyCacheDropWins: keys read from Redis before a drop (another
// replica's change arriving mid-read) are not cached after it; forget
// tells the OnForget hook, drop (a re-read) does not.
func TestKeyCacheDropWins(t *testing.T) {
	c := newKeyCache(8, time.Minute)
	now := time.Now()
	k := envelope.Keys{}
	gen := c.generation()
	c.drop("d1")
	c.put("d1", k, false, now, gen)
	if _, ok := c.get("d1", now); ok {
		t.Fatal("a read that raced with a drop was cached")
	}
	c.put("d1", k, false, now, c.generation())
	if _, ok := c.get("d1", now); !ok {
		t.Fatal("a read after the drop was not cached")
	}
	var told []string
	fn := func(id string) { told = append(told, id) }
	c.onForget.Store(&fn)
	c.drop("d1")
	c.forget("d2")
	if len(told) != 1 || told[0] != "d2" {
		t.Fatalf("OnForget told %v, want [d2]", told)
	}
	c.put("d3", k, false, now, c.generation())
	c.dropAll()
	if _, ok := c.get("d3", now); ok {
		t.Fatal("dropAll kept d3")
	}
}
