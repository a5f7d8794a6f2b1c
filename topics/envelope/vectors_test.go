package envelope

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

const vectorsPath = "testdata/vectors.json"

// vectorFile is testdata/vectors.json: everything a port needs to check
// itself byte by byte. Hex is lowercase; integers that may exceed 2^53 are
// hex strings.
type vectorFile struct {
	Comment   []string        `json:"comment"`
	Constants vectorConstants `json:"constants"`
	Keys      []keyVector     `json:"keys"`
	Envelopes []envVector     `json:"envelopes"`
	Binary    []binVector     `json:"binary"`
	Passwords []pwVector      `json:"passwords"`
	OpenCases []openVector    `json:"open_cases"`
	PassCases []passVector    `json:"password_cases"`
	Windows   []windowVector  `json:"windows"`
}

type vectorConstants struct {
	Label             string `json:"label"`
	InfoMAC           string `json:"hkdf_info_mac"`
	InfoEnc           string `json:"hkdf_info_enc"`
	InfoPassword      string `json:"hkdf_info_password"`
	MaxNonce          uint64 `json:"max_nonce"`
	MaxSize           int    `json:"max_size"`
	BinaryMagic       string `json:"binary_magic"`
	MaxBinaryPayload  int    `json:"max_binary_payload"`
	WindowSize        int    `json:"window_size"`
	PasswordValidityS int    `json:"password_validity_s"`
}

type keyVector struct {
	PSK         string `json:"psk"`
	MACKey      string `json:"mac_key"`
	EncKey      string `json:"enc_key"`
	PasswordKey string `json:"password_key"`
}

type envVector struct {
	Name        string `json:"name"`
	PSK         string `json:"psk"`
	Topic       string `json:"topic"`
	Nonce       uint64 `json:"nonce"`
	TimestampMs int64  `json:"timestamp_ms"`
	Encrypted   bool   `json:"encrypted"`
	Body        string `json:"body"`
	BodyHex     string `json:"body_hex"`
	IV          string `json:"iv,omitempty"`
	AAD         string `json:"aad_hex,omitempty"`
	Ciphertext  string `json:"ciphertext_hex,omitempty"`
	Payload     string `json:"payload"`
	MACInput    string `json:"mac_input_hex"`
	MAC         string `json:"mac"`
	Sealed      string `json:"sealed"`
}

type binVector struct {
	Name        string `json:"name"`
	PSK         string `json:"psk"`
	Topic       string `json:"topic"`
	Nonce       uint64 `json:"nonce"`
	TimestampMs int64  `json:"timestamp_ms"`
	Payload     string `json:"payload_hex"`
	MACInput    string `json:"mac_input_hex"`
	MAC         string `json:"mac"`
	Sealed      string `json:"sealed_hex"`
}

type pwVector struct {
	Name     string `json:"name"`
	PSK      string `json:"psk"`
	ID       string `json:"id"`
	UnixS    int64  `json:"unix_seconds"`
	MACInput string `json:"mac_input_hex"`
	Token    string `json:"token"`
}

type openVector struct {
	Name     string  `json:"name"`
	Form     string  `json:"form"` // "json" or "binary"
	PSK      string  `json:"psk"`
	Topic    string  `json:"topic"`
	Input    *string `json:"input,omitempty"`     // the received bytes as text (JSON form, valid UTF-8); "" is empty input
	InputHex *string `json:"input_hex,omitempty"` // the received bytes in hex (binary form, or not UTF-8); exactly one of the two
	Result   string  `json:"result"`              // ok or a Reason: malformed, oversized, bad_mac, decrypt_failed
}

type passVector struct {
	Name   string `json:"name"`
	PSK    string `json:"psk"`
	ID     string `json:"id"`
	Token  string `json:"token"`
	Now    string `json:"now"`    // RFC 3339 with nanoseconds
	Result string `json:"result"` // ok, format, expired, wrong
}

type windowVector struct {
	Name  string       `json:"name"`
	Start windowState  `json:"start"`
	Steps []windowStep `json:"steps"`
	End   windowState  `json:"end"`
}

type windowState struct {
	High uint64 `json:"high"`
	Seen string `json:"seen"` // 16 hex digits, bit i = nonce High-i
}

type windowStep struct {
	Nonce  uint64 `json:"nonce"`
	Result string `json:"result"` // accept, replay, stale_nonce
}

// resultNames maps sentinel errors to the names used in the file.
var resultNames = []struct {
	err  error
	name string
}{
	{ErrMalformed, "malformed"}, {ErrTooLarge, "oversized"}, {ErrMAC, "bad_mac"}, {ErrDecrypt, "decrypt_failed"},
	{ErrReplay, "replay"}, {ErrStale, "stale_nonce"},
	{ErrPasswordFormat, "format"}, {ErrPasswordExpired, "expired"}, {ErrPasswordMAC, "wrong"},
}

func ptr(s string) *string { return &s }

func resultName(err error, okName string) string {
	if err == nil {
		return okName
	}
	for _, r := range resultNames {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "error: " + err.Error()
}

// Bodies of the envelope vectors, in the formats of package topics.
const (
	bodyCommand = `{"command":{"id":"01JGZ8Y2W3K5M7N9P1Q3R5S7T9","action":"write_register","target_register":"export_power","value":50,"expires_at":"2026-01-01T00:05:00Z"}}`
	bodyConfig  = `{"config_update":{"version":7,"sampling_interval":5,"upload_interval":15,"registers":["voltage","current"]}}`
	bodyResult  = `{"command_result":{"id":"c-1","status":"failed","executed_at":"2026-01-01T00:00:01Z","error":"inverter said \"busy\" <timeout> & gave up\n(Zürich ☀)"}}`
)

var otherIV = mustHex("000000000000000000000001")

// generateVectors computes the whole file from the fixed inputs.
func generateVectors(t testing.TB) vectorFile {
	h := hex.EncodeToString
	vf := vectorFile{
		Comment: []string{
			"EcoWatt wire protocol v1 test vectors; see docs/PROTOCOL.md section 'Test vectors'.",
			"Hex is lowercase. 'sealed' is the exact envelope text; 'payload' is the decoded JSON string value the MAC covers.",
			"Encrypted vectors use the recorded 'iv' instead of a random one.",
			"open_cases omit the oversized case (an input of more than max_size bytes).",
			"Each open case has exactly one of 'input' (the bytes as text; \"\" is the empty input) and 'input_hex'.",
			"Regenerate with: go test ./topics/envelope -update",
		},
		Constants: vectorConstants{
			Label: Label, InfoMAC: infoMAC, InfoEnc: infoEnc, InfoPassword: infoPassword,
			MaxNonce: MaxNonce, MaxSize: MaxSize, BinaryMagic: BinaryMagic, MaxBinaryPayload: MaxBinaryPayload,
			WindowSize: WindowSize, PasswordValidityS: int(PasswordValidity / time.Second),
		},
	}
	for _, psk := range [][]byte{testPSK, otherPSK} {
		k := keysFor(t, psk)
		vf.Keys = append(vf.Keys, keyVector{h(psk), h(k.MAC[:]), h(k.Enc[:]), h(k.Password[:])})
	}

	for _, v := range []struct {
		name, topic string
		psk         []byte
		nonce       uint64
		ms          int64
		body        string
		iv          []byte // nil: plain
	}{
		{"plain birth", testTopic, testPSK, 1, testMs, testBody, nil},
		{"plain config", "ecowatt/v1/dev/inv-0001/down/config", testPSK, 2, testMs + 1000, bodyConfig, nil},
		{"plain escapes and unicode", "ecowatt/v1/dev/inv-0001/up/command_result", testPSK, 3, testMs + 2000, bodyResult, nil},
		{"plain max nonce", testTopic, testPSK, MaxNonce, testMs, testBody, nil},
		{"plain second device", "ecowatt/v1/dev/Site_7-B/up/birth", otherPSK, 1, testMs, testBody, nil},
		{"encrypted command", "ecowatt/v1/dev/inv-0001/down/command", testPSK, 4, testMs + 3000, bodyCommand, testIV},
		{"encrypted escapes and unicode", "ecowatt/v1/dev/Site_7-B/up/command_result", otherPSK, 9, testMs, bodyResult, otherIV},
		{"encrypted empty body", testTopic, testPSK, 5, testMs, "", testIV},
		{"encrypted config downlink", "ecowatt/v1/dev/inv-0001/down/config", testPSK, 1767225604123000, testMs + 4000, bodyConfig, otherIV},
	} {
		k := keysFor(t, v.psk)
		encrypt := v.iv != nil
		raw, err := Seal(k, v.topic, v.nonce, time.UnixMilli(v.ms), []byte(v.body), encrypt, bytes.NewReader(v.iv))
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		e := decodeEnv(t, raw)
		ev := envVector{
			Name: v.name, PSK: h(v.psk), Topic: v.topic, Nonce: v.nonce, TimestampMs: v.ms, Encrypted: encrypt,
			Body: v.body, BodyHex: h([]byte(v.body)), Payload: e.Payload,
			MACInput: h(Canonical(v.topic, v.nonce, v.ms, encrypt, []byte(e.Payload))), MAC: e.MAC, Sealed: string(raw),
		}
		if encrypt {
			ct, err := k.encrypt(v.topic, []byte(v.body), bytes.NewReader(v.iv))
			if err != nil {
				t.Fatal(err)
			}
			ev.IV, ev.AAD, ev.Ciphertext = h(v.iv), h(aad(v.topic)), h(ct)
		}
		vf.Envelopes = append(vf.Envelopes, ev)
	}

	for _, v := range []struct {
		name, topic string
		psk         []byte
		nonce       uint64
		payload     []byte
	}{
		{"fota chunk, all byte values", chunkTopic, testPSK, 3, testChunk()},
		{"empty payload", chunkTopic, testPSK, 4, []byte{}},
		{"second device", "ecowatt/v1/dev/Site_7-B/down/fota_chunk", otherPSK, 1 << 40, []byte("EcoWatt")},
	} {
		raw := mustSealBinary(t, keysFor(t, v.psk), v.topic, v.nonce, v.payload)
		vf.Binary = append(vf.Binary, binVector{
			Name: v.name, PSK: h(v.psk), Topic: v.topic, Nonce: v.nonce, TimestampMs: testMs, Payload: h(v.payload),
			MACInput: h(Canonical(v.topic, v.nonce, testMs, false, v.payload)), MAC: h(raw[len(raw)-32:]), Sealed: h(raw),
		})
	}

	for _, v := range []struct {
		name, id string
		psk      []byte
		sec      int64
	}{
		{"device one", testID, testPSK, 1767225600},
		{"device two", "Site_7-B", otherPSK, 1767225600},
		{"device one, other time", testID, testPSK, 1700000000},
	} {
		sec := fmt.Sprint(v.sec)
		vf.Passwords = append(vf.Passwords, pwVector{
			Name: v.name, PSK: h(v.psk), ID: v.id, UnixS: v.sec,
			MACInput: h([]byte(Label + " mqtt\x00" + v.id + "\x00" + sec)),
			Token:    Password(keysFor(t, v.psk), v.id, time.Unix(v.sec, 0)),
		})
	}

	pskOr := func(p []byte) []byte {
		if p == nil {
			return testPSK
		}
		return p
	}
	topicOr := func(s, d string) string {
		if s == "" {
			return d
		}
		return s
	}
	for _, c := range openCases(t) {
		if c.want == ErrTooLarge {
			continue
		}
		ov := openVector{Name: c.name, Form: "json", PSK: h(pskOr(c.psk)), Topic: topicOr(c.topic, testTopic), Result: resultName(c.want, "ok")}
		if utf8.Valid(c.raw) {
			ov.Input = ptr(string(c.raw))
		} else {
			ov.InputHex = ptr(h(c.raw))
		}
		vf.OpenCases = append(vf.OpenCases, ov)
	}
	for _, c := range binaryCases(t) {
		if c.name == "json is not binary" {
			continue
		}
		vf.OpenCases = append(vf.OpenCases, openVector{Name: "binary " + c.name, Form: "binary", PSK: h(pskOr(c.psk)), Topic: topicOr(c.topic, chunkTopic), InputHex: ptr(h(c.raw)), Result: resultName(c.want, "ok")})
	}
	for _, c := range passwordCases(t) {
		vf.PassCases = append(vf.PassCases, passVector{c.name, h(pskOr(c.psk)), topicOr(c.id, testID), c.token, c.now.UTC().Format(time.RFC3339Nano), resultName(c.want, "ok")})
	}
	for _, c := range windowCases {
		wv := windowVector{Name: c.name, Start: windowState{c.start.High, fmt.Sprintf("%016x", c.start.Seen)}}
		w := c.start
		for _, s := range c.steps {
			wv.Steps = append(wv.Steps, windowStep{s.n, resultName(w.Accept(s.n), "accept")})
		}
		wv.End = windowState{w.High, fmt.Sprintf("%016x", w.Seen)}
		vf.Windows = append(vf.Windows, wv)
	}
	return vf
}

func marshalVectors(t testing.TB, vf vectorFile) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(vf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestVectors checks testdata/vectors.json byte for byte against what the
// code produces now, or rewrites it under -update.
func TestVectors(t *testing.T) {
	got := marshalVectors(t, generateVectors(t))
	if *update {
		if err := os.MkdirAll(filepath.Dir(vectorsPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsPath, got, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", vectorsPath, len(got))
		return
	}
	want, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < len(gl) || i < len(wl); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s differs at line %d:\n got: %s\nfile: %s\n(the wire format changed; if that is intended, run with -update and bump the protocol version)", vectorsPath, i+1, g, w)
			}
		}
	}
}
