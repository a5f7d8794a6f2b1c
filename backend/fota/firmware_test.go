package fota

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	wire "github.com/ecowatt/ecowatt/topics/fota"
)

func TestUpload(t *testing.T) {
	h := newHarness(t)
	img := h.upload("1.0.4", 5000, false)

	f, err := h.svc.Firmware(h.Ctx, "1.0.4")
	if err != nil {
		t.Fatal(err)
	}
	if f.Size != 5000 || f.ChunkSize != 1024 || f.Chunks != 5 || f.Signed != "server" || f.Project != wire.TestProjectName || f.FailBoot {
		t.Fatalf("firmware %+v", f)
	}
	if err := f.Manifest.Verify(h.svc.PublicKey()); err != nil {
		t.Fatalf("stored manifest does not verify: %v", err)
	}
	if _, err := f.Manifest.VerifyImage(img); err != nil {
		t.Fatalf("stored manifest does not describe the image: %v", err)
	}
	// A fresh service (another replica) reads the same firmware from Redis.
	s2 := h.newService()
	got, err := s2.load(h.Ctx, "1.0.4")
	if err != nil {
		t.Fatal(err)
	}
	data, err := s2.readChunks(h.Ctx, got, []int{4, 0})
	if err != nil {
		t.Fatal(err)
	}
	if string(data[0]) != string(img[4096:]) || string(data[1]) != string(img[:1024]) {
		t.Fatal("chunks read back differ from the image")
	}

	h.upload("1.0.5", 2000, true)
	list, err := h.svc.FirmwareList(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Version != "1.0.4" || list[1].Version != "1.0.5" || !list[1].FailBoot || list[0].Manifest != nil {
		t.Fatalf("list %+v", list)
	}
	if _, err := h.svc.Firmware(h.Ctx, "9.9.9"); backend.ErrorCode(err) != backend.CodeNotFound {
		t.Fatalf("unknown version: %v", err)
	}
}

// TestUploadOfflineSigned: a manifest signed offline with the server's key
// is stored as given.
func TestUploadOfflineSigned(t *testing.T) {
	h := newHarness(t)
	img, _ := wire.BuildTestImage("2.0.0", 3000, false, 1)
	m, err := wire.BuildManifest(img, "2.0.0", 2048, h.key)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(m)
	f, err := h.svc.Upload(h.Ctx, Upload{Version: "2.0.0", Image: img, Manifest: raw})
	if err != nil {
		t.Fatal(err)
	}
	if f.Signed != "offline" || f.ChunkSize != 2048 || f.Manifest.Signature != m.Signature {
		t.Fatalf("firmware %+v", f)
	}
}

// TestUploadBadInput: each bad upload is refused with its reason and
// stores nothing.
func TestUploadBadInput(t *testing.T) {
	h := newHarness(t)
	h.upload("1.0.0", 2000, false)
	good, _ := wire.BuildTestImage("1.0.4", 5000, false, 3)
	other, _ := wire.BuildTestImage("1.0.4", 5000, false, 4)
	_, wrongKey, _ := wire.GenerateKey(rand.Reader)
	signed := func(img []byte, key []byte, mutate func(*wire.Manifest)) []byte {
		m, err := wire.BuildManifest(img, "1.0.4", 1024, key)
		if err != nil {
			t.Fatal(err)
		}
		if mutate != nil {
			mutate(&m)
		}
		b, _ := json.Marshal(m)
		return b
	}
	noDesc := append([]byte(nil), good...)
	copy(noDesc[32:36], []byte{0, 0, 0, 0}) // app descriptor magic
	notESP := make([]byte, 4096)
	cases := []struct {
		name, code, field, contains string
		up                          Upload
	}{
		{"version does not match descriptor", backend.CodeInvalid, "version", "version mismatch",
			Upload{Version: "1.0.5", Image: good}},
		{"image without a valid descriptor", backend.CodeInvalid, "file", "no app descriptor",
			Upload{Version: "1.0.4", Image: noDesc}},
		{"not an ESP32 image", backend.CodeInvalid, "file", "not an ESP32 app image",
			Upload{Version: "1.0.4", Image: notESP}},
		{"truncated image", backend.CodeInvalid, "file", "truncated",
			Upload{Version: "1.0.4", Image: good[:3000]}},
		{"truncated header", backend.CodeInvalid, "file", "truncated",
			Upload{Version: "1.0.4", Image: good[:100]}},
		{"empty image", backend.CodeInvalid, "file", "empty", Upload{Version: "1.0.4"}},
		{"bad version", backend.CodeInvalid, "version", "bad version", Upload{Version: "one", Image: good}},
		{"chunk size too small", backend.CodeInvalid, "chunk_size", "outside",
			Upload{Version: "1.0.4", Image: good, ChunkSize: 512}},
		{"chunk size too large", backend.CodeInvalid, "chunk_size", "outside",
			Upload{Version: "1.0.4", Image: good, ChunkSize: 32<<10 + 1}},
		{"pre-signed, bad signature", backend.CodeInvalid, "manifest", "does not verify",
			Upload{Version: "1.0.4", Image: good, Manifest: signed(good, h.key, func(m *wire.Manifest) {
				m.Signature = m.Signature[:10] + "00000000" + m.Signature[18:]
			})}},
		{"pre-signed, tampered field", backend.CodeInvalid, "manifest", "does not verify",
			Upload{Version: "1.0.4", Image: good, Manifest: signed(good, h.key, func(m *wire.Manifest) { m.ChunkSize = 2048; m.Chunks = m.Chunks[:3] })}},
		{"pre-signed, wrong key", backend.CodeInvalid, "manifest", "does not verify",
			Upload{Version: "1.0.4", Image: good, Manifest: signed(good, wrongKey, nil)}},
		{"pre-signed, other image", backend.CodeInvalid, "manifest", "does not describe this image",
			Upload{Version: "1.0.4", Image: good, Manifest: signed(other, h.key, nil)}},
		{"pre-signed, other version", backend.CodeInvalid, "manifest", "uploaded as",
			Upload{Version: "1.0.4", Image: good, Manifest: func() []byte {
				img, _ := wire.BuildTestImage("1.0.9", 5000, false, 3)
				m, _ := wire.BuildManifest(img, "1.0.9", 1024, h.key)
				b, _ := json.Marshal(m)
				return b
			}()}},
		{"pre-signed, malformed", backend.CodeInvalid, "manifest", "bad manifest",
			Upload{Version: "1.0.4", Image: good, Manifest: []byte(`{"version":"1.0.4"}`)}},
		{"already uploaded", backend.CodeConflict, "version", "already uploaded",
			Upload{Version: "1.0.0", Image: func() []byte { b, _ := wire.BuildTestImage("1.0.0", 2000, false, 9); return b }()}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.Snapshot()
			_, err := h.svc.Upload(h.Ctx, tc.up)
			wantCode(t, err, tc.code, tc.contains)
			if _, field := backend.ErrorMessage(err); field != tc.field {
				t.Errorf("field %q, want %q", field, tc.field)
			}
			h.AssertUnchanged(t, before)
		})
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	k1, created, err := LoadOrCreateKey(dir, rand.Reader)
	if err != nil || !created {
		t.Fatalf("first: created=%v err=%v", created, err)
	}
	k2, created, err := LoadOrCreateKey(dir, rand.Reader)
	if err != nil || created || !k1.Equal(k2) {
		t.Fatalf("second: created=%v err=%v same=%v", created, err, k1.Equal(k2))
	}
	pub, err := wire.LoadPublicKey(filepath.Join(dir, wire.PublicKeyFile))
	if err != nil || !pub.Equal(k1.Public()) {
		t.Fatalf("public key file: %v", err)
	}
	os.WriteFile(filepath.Join(dir, wire.PrivateKeyFile), []byte("garbage"), 0o600)
	if _, _, err := LoadOrCreateKey(dir, rand.Reader); err == nil {
		t.Fatal("a corrupt key file was accepted (or replaced)")
	}
}
