package envelope

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// Fixed inputs shared by the tables, the golden vectors and the fuzz seeds.
const (
	testID    = "inv-0001"
	testTopic = "ecowatt/v1/dev/inv-0001/up/birth"
	testMs    = 1767225600123 // 2026-01-01T00:00:00.123Z
)

var testTime = time.UnixMilli(testMs)

// testPSK is 00 01 02 ... 1f; otherPSK is a second, unrelated device key.
var (
	testPSK  = mustHex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	otherPSK = mustHex("c0ffee00deadbeef0123456789abcdeffedcba98765432100f1e2d3c4b5a6978")
)

// testIV is the IV the deterministic reader hands out first.
var testIV = mustHex("a0a1a2a3a4a5a6a7a8a9aaab")

const testBody = `{"online":true,"firmware_version":"1.0.3","config_version":7,"boot_count":2,"uptime_s":12}`

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func keysFor(t testing.TB, psk []byte) *Keys {
	t.Helper()
	k, err := DeriveKeys(psk)
	if err != nil {
		t.Fatal(err)
	}
	return &k
}

// ivReader returns a deterministic reader: iv, then iv again, forever, so a
// test can seal many times with known IVs.
func ivReader(iv []byte) *bytes.Reader {
	return bytes.NewReader(bytes.Repeat(iv, 1024))
}

// failReader fails every read.
type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, errFail }

var errFail = errors.New("read failed")

func mustSeal(t testing.TB, k *Keys, topic string, nonce uint64, body string, encrypt bool) []byte {
	t.Helper()
	raw, err := Seal(k, topic, nonce, testTime, []byte(body), encrypt, ivReader(testIV))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func decodeEnv(t testing.TB, raw []byte) Envelope {
	t.Helper()
	var e Envelope
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

func encodeEnv(t testing.TB, e Envelope) []byte {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// forge builds a JSON envelope carrying e's fields with a MAC that is valid
// for topic under k: what a buggy or malicious key holder could send.
func forge(t testing.TB, k *Keys, topic string, e Envelope) []byte {
	t.Helper()
	mac := k.mac(topic, e.Nonce, e.Timestamp, e.Encrypted, []byte(e.Payload))
	e.MAC = hex.EncodeToString(mac[:])
	return encodeEnv(t, e)
}

// flipHex changes one hex digit of s at i.
func flipHex(s string, i int) string {
	c := "0"
	if s[i] == '0' {
		c = "1"
	}
	return s[:i] + c + s[i+1:]
}

// flipChar changes one character of s at i to another printable one.
func flipChar(s string, i int) string {
	c := "A"
	if s[i] == 'A' {
		c = "B"
	}
	return s[:i] + c + s[i+1:]
}

func isHex(s string) bool { return strings.Trim(s, "0123456789abcdef") == "" }

// setPadBits sets the lowest bit of the last base64 digit before the "="
// padding: the unused bits, which a strict decoder requires to be zero.
func setPadBits(t testing.TB, s string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	i := strings.IndexByte(s, '=') - 1
	if i < 0 {
		t.Fatalf("setPadBits: %q has no padding", s)
	}
	d := strings.IndexByte(alphabet, s[i])
	return s[:i] + string(alphabet[d|1]) + s[i+1:]
}
