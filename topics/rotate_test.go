package topics

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics/envelope"
)

var updateRotation = flag.Bool("update", false, "rewrite testdata/rotation.json")

const rotationPath = "testdata/rotation.json"

// rotationStep is one message of the rotation vectors: what is sealed,
// under which key, and the exact envelope.
type rotationStep struct {
	Name        string `json:"name"`
	SealedUnder string `json:"sealed_under"` // "old" or "new"
	Topic       string `json:"topic"`
	Nonce       uint64 `json:"nonce"`
	TimestampMS int64  `json:"timestamp_ms"`
	Encrypted   bool   `json:"encrypted"`
	IV          string `json:"iv,omitempty"`
	Body        string `json:"body"`
	Sealed      string `json:"sealed"`
	// OpensUnderOther is the result of opening Sealed under the other key.
	OpensUnderOther string `json:"opens_under_other"`
}

type rotationPassword struct {
	Key         string `json:"key"` // "old" or "new"
	UnixSeconds int64  `json:"unix_seconds"`
	Token       string `json:"token"`
}

type rotationVectors struct {
	Comment   []string           `json:"_comment"`
	Device    string             `json:"device"`
	OldPSK    string             `json:"old_psk"`
	NewPSK    string             `json:"new_psk"`
	Steps     []rotationStep     `json:"steps"`
	Passwords []rotationPassword `json:"passwords"`
}

func generateRotation(t *testing.T) rotationVectors {
	t.Helper()
	const dev = "inv-0001"
	oldPSK, newPSK := make([]byte, 32), make([]byte, 32)
	for i := range oldPSK {
		oldPSK[i], newPSK[i] = byte(i), byte(0xa0+i)
	}
	oldK, _ := envelope.DeriveKeys(oldPSK)
	newK, _ := envelope.DeriveKeys(newPSK)
	keys := map[string]*envelope.Keys{"old": &oldK, "new": &newK}
	other := map[string]string{"old": "new", "new": "old"}
	const rid = "01JH0000000000000000000000"
	ts := time.UnixMilli(1767225600123)
	iv := bytes.Repeat([]byte{0x11}, 12)
	v := rotationVectors{
		Comment: []string{
			"PROTOCOL.md section 15: a key rotation from old_psk to new_psk, message by message.",
			"Seal each step (feed iv for the encrypted one) and compare sealed; open sealed under the other key and compare opens_under_other.",
			"Test keys only. Regenerate with: go test ./topics -run TestRotationVectors -update",
		},
		Device: dev, OldPSK: hex.EncodeToString(oldPSK), NewPSK: hex.EncodeToString(newPSK),
	}
	steps := []struct {
		name, under, kind, dir string
		nonce                  uint64
		body                   string
		enc                    bool
	}{
		{"rotate_key downlink", "old", KindRotateKey, Down, 1767225600123456, `{"rotate_key":{"id":"` + rid + `","key":"` + hex.EncodeToString(newPSK) + `"}}`, true},
		{"key_ack uplink", "new", KindKeyAck, Up, 42, `{"key_ack":{"id":"` + rid + `"}}`, false},
		{"key_confirm downlink", "new", KindKeyConfirm, Down, 1767225600223456, `{"key_confirm":{"id":"` + rid + `"}}`, false},
	}
	for _, s := range steps {
		topic := Topic{Class: ClassDevice, Device: dev, Dir: s.dir, Kind: s.kind}.String()
		var random *bytes.Reader
		st := rotationStep{Name: s.name, SealedUnder: s.under, Topic: topic, Nonce: s.nonce, TimestampMS: ts.UnixMilli(), Encrypted: s.enc, Body: s.body}
		if s.enc {
			random = bytes.NewReader(iv)
			st.IV = hex.EncodeToString(iv)
		}
		var sealed []byte
		var err error
		if random != nil {
			sealed, err = envelope.Seal(keys[s.under], topic, s.nonce, ts, []byte(s.body), true, random)
		} else {
			sealed, err = envelope.Seal(keys[s.under], topic, s.nonce, ts, []byte(s.body), false, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		st.Sealed = string(sealed)
		st.OpensUnderOther = "ok"
		if _, err := envelope.Open(keys[other[s.under]], topic, sealed); err != nil {
			st.OpensUnderOther = envelope.Reason(err)
		}
		v.Steps = append(v.Steps, st)
	}
	for _, k := range []string{"old", "new"} {
		v.Passwords = append(v.Passwords, rotationPassword{Key: k, UnixSeconds: 1767225600, Token: envelope.Password(keys[k], dev, time.Unix(1767225600, 0))})
	}
	return v
}

// TestRotationVectors checks testdata/rotation.json byte for byte, or
// rewrites it under -update, and checks its messages against the parsers.
func TestRotationVectors(t *testing.T) {
	v := generateRotation(t)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	if *updateRotation {
		if err := os.WriteFile(rotationPath, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(rotationPath)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("%s differs from what the code produces (the wire format changed? run with -update only if intended)", rotationPath)
	}
	for _, s := range v.Steps {
		if s.OpensUnderOther != envelope.ReasonBadMAC {
			t.Errorf("%s opens under the other key: %s, want bad_mac", s.Name, s.OpensUnderOther)
		}
	}
	_, psk, err := ParseRotateKey([]byte(v.Steps[0].Body))
	if err != nil || hex.EncodeToString(psk) != v.NewPSK {
		t.Errorf("ParseRotateKey(vector) = %x, %v", psk, err)
	}
}

func TestParseRotationBodies(t *testing.T) {
	key := hex.EncodeToString(bytes.Repeat([]byte{1}, 32))
	for _, tc := range []struct {
		name, body string
		ok         bool
	}{
		{"ok", `{"rotate_key":{"id":"r1","key":"` + key + `"}}`, true},
		{"uppercase hex", `{"rotate_key":{"id":"r1","key":"` + "0A" + key[2:] + `"}}`, false},
		{"short key", `{"rotate_key":{"id":"r1","key":"0101"}}`, false},
		{"no id", `{"rotate_key":{"key":"` + key + `"}}`, false},
		{"id with space", `{"rotate_key":{"id":"r 1","key":"` + key + `"}}`, false},
		{"unknown member", `{"rotate_key":{"id":"r1","key":"` + key + `","x":1}}`, false},
		{"trailing data", `{"rotate_key":{"id":"r1","key":"` + key + `"}} {}`, false},
		{"other body", `{"key_ack":{"id":"r1"}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseRotateKey([]byte(tc.body))
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrBadBody)) {
				t.Errorf("ParseRotateKey = %v, ok want %v", err, tc.ok)
			}
		})
	}
	if _, err := ParseKeyAck([]byte(`{"key_ack":{"id":"r1"}}`)); err != nil {
		t.Error(err)
	}
	if _, err := ParseKeyAck([]byte(`{"key_ack":{"id":""}}`)); err == nil {
		t.Error("empty key_ack id accepted")
	}
	if _, err := ParseKeyConfirm([]byte(`{"key_confirm":{"id":"r1"}}`)); err != nil {
		t.Error(err)
	}
}

// FuzzParseRotateKey: the parser never panics, and what it accepts is a
// well-formed body whose key is the 32 bytes of its hex.
func FuzzParseRotateKey(f *testing.F) {
	key := hex.EncodeToString(bytes.Repeat([]byte{1}, 32))
	f.Add([]byte(`{"rotate_key":{"id":"r1","key":"` + key + `"}}`))
	f.Add([]byte(`{"rotate_key":{"id":"r1","key":"0101"}}`))
	f.Add([]byte(`{"rotate_key":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, psk, err := ParseRotateKey(b)
		if err != nil {
			return
		}
		if len(psk) != 32 || hex.EncodeToString(psk) != r.Key || checkRotationID(r.ID) != nil {
			t.Fatalf("accepted %q as %+v / %x", b, r, psk)
		}
	})
}
