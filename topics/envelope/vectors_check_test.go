package envelope

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

// This file checks testdata/vectors.json the way a port would: it reads
// only the file and the standard library primitives, rebuilding every MAC
// input from docs/PROTOCOL.md rather than calling Canonical, and then runs
// the package's own Open/VerifyPassword/Window over the case tables.

func loadVectors(t *testing.T) vectorFile {
	t.Helper()
	raw, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&vf); err != nil {
		t.Fatal(err)
	}
	return vf
}

// specMACInput is the MAC input written straight from the specification.
func specMACInput(topic string, nonce uint64, ms int64, encrypted bool, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("ecowatt-v1\x00")
	b.Write([]byte{byte(len(topic) >> 8), byte(len(topic))})
	b.WriteString(topic)
	for i := 7; i >= 0; i-- {
		b.WriteByte(byte(nonce >> (8 * i)))
	}
	for i := 7; i >= 0; i-- {
		b.WriteByte(byte(uint64(ms) >> (8 * i)))
	}
	if encrypted {
		b.WriteByte(1)
	} else {
		b.WriteByte(0)
	}
	n := len(payload)
	b.Write([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	b.Write(payload)
	return b.Bytes()
}

func hmacHex(key, msg []byte) string {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return hex.EncodeToString(h.Sum(nil))
}

func derive(t *testing.T, pskHex, info string) []byte {
	t.Helper()
	k, err := hkdf.Key(sha256.New, mustHex(pskHex), nil, info, 32)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestVectorsIndependently(t *testing.T) {
	if *update {
		t.Skip("-update: TestVectors rewrites the file")
	}
	vf := loadVectors(t)
	c := vf.Constants
	if c.Label != "ecowatt-v1" || c.InfoMAC != "ecowatt-v1 mac" || c.InfoEnc != "ecowatt-v1 enc" || c.InfoPassword != "ecowatt-v1 mqtt-password" {
		t.Fatalf("constants changed: %+v", c)
	}
	t.Run("keys", func(t *testing.T) {
		for _, k := range vf.Keys {
			for _, d := range []struct{ got, info string }{{k.MACKey, c.InfoMAC}, {k.EncKey, c.InfoEnc}, {k.PasswordKey, c.InfoPassword}} {
				if want := hex.EncodeToString(derive(t, k.PSK, d.info)); d.got != want {
					t.Errorf("psk %s info %q: %s, want %s", k.PSK[:8], d.info, d.got, want)
				}
			}
		}
	})
	for _, v := range vf.Envelopes {
		t.Run("envelope "+v.Name, func(t *testing.T) {
			macKey := derive(t, v.PSK, c.InfoMAC)
			var env map[string]any
			if err := json.Unmarshal([]byte(v.Sealed), &env); err != nil || len(env) != 5 {
				t.Fatalf("sealed is not a 5-field object: %v", err)
			}
			if env["payload"] != v.Payload || env["mac"] != v.MAC || env["encrypted"] != v.Encrypted {
				t.Fatalf("sealed fields disagree with the vector: %v", env)
			}
			in := specMACInput(v.Topic, v.Nonce, v.TimestampMs, v.Encrypted, []byte(v.Payload))
			if got := hex.EncodeToString(in); got != v.MACInput {
				t.Fatalf("mac input\n got %s\nfile %s", got, v.MACInput)
			}
			if got := hmacHex(macKey, in); got != v.MAC {
				t.Fatalf("mac %s, file %s", got, v.MAC)
			}
			if body, _ := hex.DecodeString(v.BodyHex); string(body) != v.Body {
				t.Fatal("body_hex disagrees with body")
			}
			if v.Encrypted {
				block, _ := aes.NewCipher(derive(t, v.PSK, c.InfoEnc))
				g, _ := cipher.NewGCM(block)
				aadWant := append([]byte("ecowatt-v1\x00"), v.Topic...)
				if v.AAD != hex.EncodeToString(aadWant) {
					t.Fatalf("aad %s", v.AAD)
				}
				ct := g.Seal(mustHex(v.IV), mustHex(v.IV), []byte(v.Body), aadWant)
				if hex.EncodeToString(ct) != v.Ciphertext || base64.StdEncoding.EncodeToString(ct) != v.Payload {
					t.Fatalf("ciphertext mismatch")
				}
			} else if v.Payload != v.Body {
				t.Fatal("plain payload differs from body")
			}
			k := keysFor(t, mustHex(v.PSK))
			m, err := Open(k, v.Topic, []byte(v.Sealed))
			if err != nil || string(m.Body) != v.Body || m.Nonce != v.Nonce || m.Timestamp.UnixMilli() != v.TimestampMs {
				t.Fatalf("Open = %+v, %v", m, err)
			}
			raw, err := Seal(k, v.Topic, v.Nonce, time.UnixMilli(v.TimestampMs), []byte(v.Body), v.Encrypted, bytes.NewReader(mustHex(v.IV)))
			if err != nil || string(raw) != v.Sealed {
				t.Fatalf("Seal does not reproduce sealed: %s, %v", raw, err)
			}
		})
	}
	for _, v := range vf.Binary {
		t.Run("binary "+v.Name, func(t *testing.T) {
			payload := mustHex(v.Payload)
			in := specMACInput(v.Topic, v.Nonce, v.TimestampMs, false, payload)
			if hex.EncodeToString(in) != v.MACInput {
				t.Fatal("mac input mismatch")
			}
			mac := hmacHex(derive(t, v.PSK, c.InfoMAC), in)
			var frame bytes.Buffer
			frame.WriteString(c.BinaryMagic)
			frame.Write(in[len(in)-len(payload)-4-1-16 : len(in)-len(payload)-4-1]) // nonce, timestamp
			frame.WriteByte(0)
			frame.Write(in[len(in)-len(payload)-4:]) // length, payload
			frame.Write(mustHex(mac))
			if mac != v.MAC || hex.EncodeToString(frame.Bytes()) != v.Sealed {
				t.Fatalf("frame\n got %x\nfile %s", frame.Bytes(), v.Sealed)
			}
			m, err := OpenBinary(keysFor(t, mustHex(v.PSK)), v.Topic, frame.Bytes())
			if err != nil || !bytes.Equal(m.Body, payload) {
				t.Fatalf("OpenBinary: %v", err)
			}
		})
	}
	for _, v := range vf.Passwords {
		t.Run("password "+v.Name, func(t *testing.T) {
			sec := strconv.FormatInt(v.UnixS, 10)
			in := []byte("ecowatt-v1 mqtt\x00" + v.ID + "\x00" + sec)
			if hex.EncodeToString(in) != v.MACInput {
				t.Fatal("mac input mismatch")
			}
			if want := "v1." + sec + "." + hmacHex(derive(t, v.PSK, c.InfoPassword), in); v.Token != want {
				t.Fatalf("token %s, want %s", v.Token, want)
			}
		})
	}
	t.Run("open cases", func(t *testing.T) {
		for _, v := range vf.OpenCases {
			k := keysFor(t, mustHex(v.PSK))
			var in []byte
			switch {
			case (v.Input == nil) == (v.InputHex == nil):
				t.Fatalf("%s: want exactly one of input and input_hex", v.Name)
			case v.Input != nil:
				in = []byte(*v.Input)
			default:
				in = mustHex(*v.InputHex)
			}
			var err error
			if v.Form == "binary" {
				_, err = OpenBinary(k, v.Topic, in)
			} else {
				_, err = Open(k, v.Topic, in)
			}
			if got := resultName(err, "ok"); got != v.Result {
				t.Errorf("%s: %s, file says %s", v.Name, got, v.Result)
			}
		}
	})
	t.Run("password cases", func(t *testing.T) {
		for _, v := range vf.PassCases {
			now, err := time.Parse(time.RFC3339Nano, v.Now)
			if err != nil {
				t.Fatal(err)
			}
			err = VerifyPassword(keysFor(t, mustHex(v.PSK)), v.ID, v.Token, now)
			if got := resultName(err, "ok"); got != v.Result {
				t.Errorf("%s: %s, file says %s", v.Name, got, v.Result)
			}
		}
	})
	t.Run("windows", func(t *testing.T) {
		for _, v := range vf.Windows {
			seen, _ := strconv.ParseUint(v.Start.Seen, 16, 64)
			w := Window{v.Start.High, seen}
			for i, s := range v.Steps {
				if got := resultName(w.Accept(s.Nonce), "accept"); got != s.Result {
					t.Errorf("%s step %d: nonce %d %s, file says %s", v.Name, i, s.Nonce, got, s.Result)
				}
			}
			if got := (windowState{w.High, fmt.Sprintf("%016x", w.Seen)}); got != v.End {
				t.Errorf("%s: end %+v, file says %+v", v.Name, got, v.End)
			}
		}
	})
}
