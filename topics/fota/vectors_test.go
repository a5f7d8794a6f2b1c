package fota

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

const vectorsPath = "testdata/vectors.json"

// The vectors file: every byte of the FOTA wire format, for ports to check.
type vectors struct {
	Comment   string            `json:"comment"`
	Constants map[string]any    `json:"constants"`
	Key       keyVector         `json:"key"`
	Images    []imageVector     `json:"images"`
	Manifests []manifestVector  `json:"manifests"`
	Chunks    []chunkVector     `json:"chunks"`
	Bitmaps   []bitmapVector    `json:"bitmaps"`
	Versions  []versionVector   `json:"versions"`
	Bodies    map[string]string `json:"bodies"`
}

type keyVector struct {
	Seed         string `json:"seed"`
	PublicKey    string `json:"public_key"`
	PublicKeyPEM string `json:"public_key_pem"`
}

type imageVector struct {
	Version  string `json:"version"`
	Size     int    `json:"size"`
	FailBoot bool   `json:"fail_boot"`
	Seed     int64  `json:"seed"`
	SHA256   string `json:"sha256"`
	ImageHex string `json:"image_hex,omitempty"`
}

type manifestVector struct {
	Image            imageVector `json:"image"`
	ChunkSize        int         `json:"chunk_size"`
	SigningBytesHex  string      `json:"signing_bytes_hex"`
	Manifest         Manifest    `json:"manifest"`
	ManifestBodyJSON string      `json:"manifest_body_json"`
}

type chunkVector struct {
	Version    string `json:"version"`
	Index      int    `json:"index"`
	DataHex    string `json:"data_hex"`
	EncodedHex string `json:"encoded_hex"`
}

type bitmapVector struct {
	Len        int    `json:"len"`
	Set        []int  `json:"set"`
	Missing4   []int  `json:"missing_4"`
	EncodedHex string `json:"encoded_hex"`
}

type versionVector struct {
	A   string `json:"a"`
	B   string `json:"b"`
	Cmp int    `json:"cmp"`
}

func buildVectors(t *testing.T) vectors {
	t.Helper()
	_, priv := testKey(0x42)
	pub := priv.Public().(ed25519.PublicKey)
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	v := vectors{
		Comment: "EcoWatt FOTA test vectors; see docs/PROTOCOL.md, FOTA section. Test key only: never use it to sign firmware.",
		Constants: map[string]any{
			"signing_label": SigningLabel, "min_chunk_size": MinChunkSize, "max_chunk_size": MaxChunkSize,
			"max_chunks": MaxChunks, "max_image_size": MaxImageSize, "max_version_len": MaxVersionLen,
			"max_window": MaxWindow, "max_chunk_payload": MaxChunkPayload, "max_body_size": MaxBodySize,
			"image_magic": ImageMagic, "app_desc_magic": AppDescMagic, "fail_boot_reserv1": "4641494c",
		},
		Key: keyVector{
			Seed:         hex.EncodeToString(priv.Seed()),
			PublicKey:    hex.EncodeToString(pub),
			PublicKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})),
		},
	}
	image := func(version string, size int, failBoot bool, seed int64, withBytes bool) ([]byte, imageVector) {
		img := mustImage(t, version, size, failBoot, seed)
		sum := sha256.Sum256(img)
		iv := imageVector{Version: version, Size: size, FailBoot: failBoot, Seed: seed, SHA256: hex.EncodeToString(sum[:])}
		if withBytes {
			iv.ImageHex = hex.EncodeToString(img)
		}
		return img, iv
	}
	small, smallV := image("1.0.4", 2500, false, 1, true)
	_, failV := image("1.0.5", 1000, true, 2, true)
	_, bigV := image("1.0.4", 1<<20, false, 1, false)
	v.Images = []imageVector{smallV, failV, bigV}

	for _, cs := range []int{1024, 2048} {
		m := mustManifest(t, small, "1.0.4", cs, priv)
		sb, err := m.SigningBytes()
		if err != nil {
			t.Fatal(err)
		}
		v.Manifests = append(v.Manifests, manifestVector{
			Image: smallV, ChunkSize: cs, SigningBytesHex: hex.EncodeToString(sb), Manifest: m,
			ManifestBodyJSON: string(mustJSON(t, ManifestBody{&m})),
		})
	}
	for _, c := range []Chunk{
		{"1.0.4", 0, []byte("hello")},
		{"1.0.4", 2, small[2048:]},
		{"v10.20.30-rc.1+build.5", 3071, []byte{0x00, 0xff}},
	} {
		enc, err := EncodeChunk(c)
		if err != nil {
			t.Fatal(err)
		}
		v.Chunks = append(v.Chunks, chunkVector{c.Version, c.Index, hex.EncodeToString(c.Data), hex.EncodeToString(enc)})
	}
	for _, bv := range []struct {
		n   int
		set []int
	}{{0, []int{}}, {3, []int{1}}, {64, []int{0, 1, 2, 8, 63}}, {13, []int{0, 1, 2, 3, 4, 5, 6, 7, 12}}} {
		bm, _ := NewBitmap(bv.n)
		for _, i := range bv.set {
			if err := bm.Set(i); err != nil {
				t.Fatal(err)
			}
		}
		enc, _ := bm.MarshalBinary()
		missing := append([]int{}, bm.Missing(4)...) // [] rather than null in the file
		v.Bitmaps = append(v.Bitmaps, bitmapVector{bv.n, bv.set, missing, hex.EncodeToString(enc)})
	}
	for _, p := range [][2]string{
		{"1.0.4", "1.0.10"}, {"1.0.10", "1.0.4"}, {"1.2", "1.2.0"}, {"v1.2.3", "1.2.3"}, {"1.1.0-rc.1", "1.1.0"},
		{"1.1.0-alpha", "1.1.0-alpha.1"}, {"1.1.0-alpha.2", "1.1.0-alpha.10"}, {"1.1.0-alpha.10", "1.1.0-beta"},
		{"1.0.0+build.7", "1.0.0+build.8"}, {"2.0.0", "10.0.0"},
	} {
		c, err := CompareVersions(p[0], p[1])
		if err != nil {
			t.Fatal(err)
		}
		v.Versions = append(v.Versions, versionVector{p[0], p[1], c})
	}
	v.Bodies = map[string]string{
		"fota_request": string(mustJSON(t, RequestBody{&Request{Version: "1.0.4", Chunks: []int{3, 4, 5, 6}}})),
		"fota_status": string(mustJSON(t, StatusBody{&Status{Version: "1.0.4", State: StateDownloading,
			ChunkReceived: 12, TotalChunks: 64, Running: "1.0.3"}})),
		"fota_status_rolled_back": string(mustJSON(t, StatusBody{&Status{Version: "1.0.5", State: StateRolledBack,
			ChunkReceived: 64, TotalChunks: 64, Reason: ReasonBootFailed, Detail: "self-test failed 3 times", Running: "1.0.4"}})),
		"rollback": string(mustJSON(t, RollbackBody{&Rollback{Reason: "operator: bad telemetry on 1.0.5", Version: "1.0.4"}})),
	}
	return v
}

// TestVectors pins the wire format: the file must equal what the code
// produces now. Run with -update after an intended change (and bump the
// signing label: deployed devices would break).
func TestVectors(t *testing.T) {
	got, err := json.MarshalIndent(buildVectors(t), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	if *update {
		if err := os.MkdirAll(filepath.Dir(vectorsPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsPath, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("%v (run go test ./topics/fota -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date with the code; if the change is intended, run go test ./topics/fota -update", vectorsPath)
	}
}

// TestVectorsIndependently re-checks the file from its own contents with
// standard-library primitives only, the way a port would.
func TestVectorsIndependently(t *testing.T) {
	raw, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	seed, _ := hex.DecodeString(v.Key.Seed)
	pub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	if hex.EncodeToString(pub) != v.Key.PublicKey {
		t.Fatal("public key does not follow from the seed")
	}
	for _, iv := range v.Images {
		img := mustImage(t, iv.Version, iv.Size, iv.FailBoot, iv.Seed)
		if sum := sha256.Sum256(img); hex.EncodeToString(sum[:]) != iv.SHA256 {
			t.Errorf("image %s/%d: sha256 differs", iv.Version, iv.Size)
		}
		if iv.ImageHex != "" && iv.ImageHex != hex.EncodeToString(img) {
			t.Errorf("image %s/%d: bytes differ", iv.Version, iv.Size)
		}
	}
	for _, mv := range v.Manifests {
		m := mv.Manifest
		// Assemble the signing bytes by hand.
		want := []byte(v.Constants["signing_label"].(string))
		want = append(want, 0, byte(len(m.Version)))
		want = append(want, m.Version...)
		want = binary.BigEndian.AppendUint64(want, uint64(m.Size))
		h, _ := hex.DecodeString(m.Hash)
		want = append(want, h...)
		want = binary.BigEndian.AppendUint32(want, uint32(m.ChunkSize))
		want = binary.BigEndian.AppendUint32(want, uint32(len(m.Chunks)))
		for _, c := range m.Chunks {
			ch, _ := hex.DecodeString(c)
			want = append(want, ch...)
		}
		if hex.EncodeToString(want) != mv.SigningBytesHex {
			t.Errorf("chunk size %d: signing bytes differ", mv.ChunkSize)
		}
		sig, _ := hex.DecodeString(m.Signature)
		if !ed25519.Verify(pub, want, sig) {
			t.Errorf("chunk size %d: signature does not verify", mv.ChunkSize)
		}
		img, _ := hex.DecodeString(mv.Image.ImageHex)
		for i, c := range m.Chunks {
			sum := sha256.Sum256(img[i*m.ChunkSize : min((i+1)*m.ChunkSize, len(img))])
			if hex.EncodeToString(sum[:]) != c {
				t.Errorf("chunk size %d: chunk %d hash differs", mv.ChunkSize, i)
			}
		}
		if parsed, err := ParseManifestBody([]byte(mv.ManifestBodyJSON)); err != nil || parsed.Verify(pub) != nil {
			t.Errorf("manifest body does not parse and verify: %v", err)
		}
	}
	for _, cv := range v.Chunks {
		data, _ := hex.DecodeString(cv.DataHex)
		want := append([]byte{byte(len(cv.Version))}, cv.Version...)
		want = binary.BigEndian.AppendUint32(want, uint32(cv.Index))
		want = append(want, data...)
		if hex.EncodeToString(want) != cv.EncodedHex {
			t.Errorf("chunk %s/%d: encoding differs", cv.Version, cv.Index)
		}
	}
}
