package fota

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/redis/go-redis/v9"
)

// Firmware is one uploaded firmware version, as the API shows it.
type Firmware struct {
	Version    string    `json:"version"`
	Size       int64     `json:"size"`
	Hash       string    `json:"hash"`
	ChunkSize  int       `json:"chunk_size"`
	Chunks     int       `json:"chunks"`
	Project    string    `json:"project_name"`
	FailBoot   bool      `json:"fail_boot,omitempty"` // a test image that fails its self-test
	Signed     string    `json:"signed"`              // "server" or "offline"
	UploadedAt time.Time `json:"uploaded_at"`
	// Manifest is the signed manifest; set by Firmware, not by FirmwareList.
	Manifest *wire.Manifest `json:"manifest,omitempty"`
}

// Upload is a firmware upload.
type Upload struct {
	Version string
	Image   []byte
	// Manifest, when set, is a manifest signed offline (ecowatt fota
	// sign), as a bare object or as {"fota_manifest":{...}}. It must
	// verify under the server's public key and describe Image exactly.
	Manifest []byte
	// ChunkSize of the manifest the server builds; 0 means the server's
	// default. Ignored with Manifest.
	ChunkSize int
}

// firmware is a stored version with its parsed manifest.
type firmware struct {
	Firmware
	manifest wire.Manifest
	body     []byte // {"fota_manifest":{...}}, ready to send
}

// Fields of the firmware meta hash.
const (
	mVersion    = "version"
	mSize       = "size"
	mHash       = "hash"
	mChunkSize  = "chunk_size"
	mChunks     = "chunks"
	mProject    = "project_name"
	mFailBoot   = "fail_boot"
	mSigned     = "signed"
	mUploadedAt = "uploaded_at"
	mManifest   = "manifest"
)

func (s *Service) fwMeta(v string) string  { return s.keys.Prefix() + "{fw:" + v + "}:meta" }
func (s *Service) fwImage(v string) string { return s.keys.Prefix() + "{fw:" + v + "}:image" }
func (s *Service) fwIndex() string         { return s.keys.Global("firmware") }

func checkChunkSize(n int) error {
	if n < wire.MinChunkSize || n > wire.MaxChunkSize {
		return backend.Errorf(backend.CodeInvalid, "chunk_size", "chunk size %d outside %d..%d bytes (1-32 KiB)", n, wire.MinChunkSize, wire.MaxChunkSize)
	}
	return nil
}

func invalid(field string, err error, format string, args ...any) error {
	return &backend.Error{Code: backend.CodeInvalid, Field: field, Message: fmt.Sprintf(format, args...), Err: err}
}

// storeScript stores a firmware version unless it exists.
// KEYS: meta, image. ARGV: image, then the meta field/value pairs.
var storeScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
`)

// Upload checks an image, builds and signs its manifest (or verifies the
// pre-signed one) and stores both. Every refusal is a CodeInvalid (or
// CodeTooLarge) error naming the reason, and stores nothing; an existing
// version is CodeConflict (versions are immutable, so devices mid-download
// never see the image change under them).
func (s *Service) Upload(ctx context.Context, u Upload) (Firmware, error) {
	if err := wire.ValidVersion(u.Version); err != nil {
		return Firmware{}, invalid("version", err, "bad version %q: %v", u.Version, err)
	}
	if len(u.Image) == 0 {
		return Firmware{}, backend.Errorf(backend.CodeInvalid, "file", "the firmware image is empty")
	}
	if len(u.Image) > wire.MaxImageSize {
		return Firmware{}, backend.Errorf(backend.CodeTooLarge, "file", "image is %d bytes, limit %d", len(u.Image), wire.MaxImageSize)
	}
	d, err := wire.ParseImage(u.Image)
	if err != nil {
		return Firmware{}, invalid("file", err, "not a valid ESP32 app image: %v", err)
	}
	if d.Version != u.Version {
		return Firmware{}, invalid("version", wire.ErrVersionMismatch,
			"version mismatch: the image's app descriptor says %q, uploaded as %q", d.Version, u.Version)
	}
	chunkSize := u.ChunkSize
	if chunkSize == 0 {
		chunkSize = s.cfg.ChunkSize
	}
	var m wire.Manifest
	signed := "server"
	if len(u.Manifest) > 0 {
		if m, err = s.checkSigned(u); err != nil {
			return Firmware{}, err
		}
		signed = "offline"
	} else {
		if err := checkChunkSize(chunkSize); err != nil {
			return Firmware{}, err
		}
		if m, err = wire.BuildManifest(u.Image, u.Version, chunkSize, s.key); err != nil {
			return Firmware{}, invalid("file", err, "cannot build a manifest: %v", err)
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return Firmware{}, fmt.Errorf("upload %s: %w", u.Version, err)
	}
	now := s.now().UTC()
	f := Firmware{
		Version: m.Version, Size: m.Size, Hash: m.Hash, ChunkSize: m.ChunkSize, Chunks: len(m.Chunks),
		Project: d.ProjectName, FailBoot: d.FailBoot, Signed: signed, UploadedAt: now.Truncate(time.Millisecond),
	}
	ok, err := storeScript.Run(ctx, s.rdb, []string{s.fwMeta(u.Version), s.fwImage(u.Version)}, u.Image,
		mVersion, f.Version, mSize, f.Size, mHash, f.Hash, mChunkSize, f.ChunkSize, mChunks, f.Chunks,
		mProject, f.Project, mFailBoot, strconv.FormatBool(f.FailBoot), mSigned, signed,
		mUploadedAt, now.UnixMilli(), mManifest, raw).Int()
	if err != nil {
		return Firmware{}, backend.Unavailable("upload "+u.Version, err)
	}
	if ok == 0 {
		return Firmware{}, backend.Errorf(backend.CodeConflict, "version", "firmware %s is already uploaded; versions are immutable", u.Version)
	}
	if err := s.rdb.ZAdd(ctx, s.fwIndex(), redis.Z{Score: float64(now.UnixMilli()), Member: u.Version}).Err(); err != nil {
		return Firmware{}, backend.Unavailable("upload "+u.Version+": index", err)
	}
	s.log.Info().Str("version", f.Version).Int64("size", f.Size).Int("chunks", f.Chunks).Str("signed", signed).
		Bool("fail_boot", f.FailBoot).Msg("firmware uploaded")
	f.Manifest = &m
	return f, nil
}

// checkSigned parses and verifies a manifest signed offline against the
// server's public key and the image.
func (s *Service) checkSigned(u Upload) (wire.Manifest, error) {
	m, err := wire.ParseManifest(u.Manifest)
	if err != nil {
		var berr error
		if m, berr = wire.ParseManifestBody(u.Manifest); berr != nil {
			return wire.Manifest{}, invalid("manifest", err, "bad manifest: %v", err)
		}
	}
	if m.Version != u.Version {
		return wire.Manifest{}, invalid("manifest", wire.ErrVersionMismatch, "the manifest is for %q, uploaded as %q", m.Version, u.Version)
	}
	if err := m.Verify(s.pub); err != nil {
		return wire.Manifest{}, invalid("manifest", err,
			"the manifest's signature does not verify under this server's firmware key (tampered, or signed with another key): %v", err)
	}
	want, err := wire.BuildManifest(u.Image, u.Version, m.ChunkSize, s.key)
	if err != nil {
		return wire.Manifest{}, invalid("manifest", err, "cannot check the manifest against the image: %v", err)
	}
	if m.Size != want.Size || m.Hash != want.Hash || !slices.Equal(m.Chunks, want.Chunks) {
		return wire.Manifest{}, invalid("manifest", wire.ErrImageHash, "the manifest does not describe this image (size, hash or chunk hashes differ)")
	}
	return m, nil
}

// Firmware returns one version with its manifest. An unknown version is
// CodeNotFound.
func (s *Service) Firmware(ctx context.Context, version string) (Firmware, error) {
	f, err := s.load(ctx, version)
	if err != nil {
		return Firmware{}, err
	}
	out := f.Firmware
	m := f.manifest
	out.Manifest = &m
	return out, nil
}

// FirmwareList returns every stored version, oldest upload first.
func (s *Service) FirmwareList(ctx context.Context) ([]Firmware, error) {
	vs, err := s.rdb.ZRange(ctx, s.fwIndex(), 0, -1).Result()
	if err != nil {
		return nil, backend.Unavailable("list firmware", err)
	}
	out := make([]Firmware, 0, len(vs))
	for _, v := range vs {
		f, err := s.load(ctx, v)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, f.Firmware)
	}
	return out, nil
}

// load returns a stored version, from the cache when seen before.
func (s *Service) load(ctx context.Context, version string) (*firmware, error) {
	s.mu.Lock()
	f, ok := s.fw[version]
	s.mu.Unlock()
	if ok {
		return f, nil
	}
	if wire.ValidVersion(version) != nil {
		return nil, backend.Errorf(backend.CodeNotFound, "version", "no firmware %q", version)
	}
	h, err := s.rdb.HGetAll(ctx, s.fwMeta(version)).Result()
	if err != nil {
		return nil, backend.Unavailable("load firmware "+version, err)
	}
	if len(h) == 0 {
		return nil, backend.Errorf(backend.CodeNotFound, "version", "no firmware %q", version)
	}
	f = &firmware{}
	if err := json.Unmarshal([]byte(h[mManifest]), &f.manifest); err != nil {
		return nil, fmt.Errorf("load firmware %s: manifest: %w", version, err)
	}
	m := f.manifest
	f.Firmware = Firmware{
		Version: m.Version, Size: m.Size, Hash: m.Hash, ChunkSize: m.ChunkSize, Chunks: len(m.Chunks),
		Project: h[mProject], FailBoot: h[mFailBoot] == "true", Signed: h[mSigned],
	}
	if ms, err := strconv.ParseInt(h[mUploadedAt], 10, 64); err == nil {
		f.UploadedAt = time.UnixMilli(ms).UTC()
	}
	if f.body, err = json.Marshal(wire.ManifestBody{FotaManifest: &m}); err != nil {
		return nil, fmt.Errorf("load firmware %s: %w", version, err)
	}
	s.mu.Lock()
	s.fw[version] = f
	s.mu.Unlock()
	return f, nil
}

// readChunks reads the named chunks of f in one round trip.
func (s *Service) readChunks(ctx context.Context, f *firmware, idx []int) ([][]byte, error) {
	cmds := make([]*redis.StringCmd, len(idx))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range idx {
			off, end, _ := f.manifest.ChunkBounds(c) // the caller checked c
			cmds[i] = p.GetRange(ctx, s.fwImage(f.Version), off, end-1)
		}
		return nil
	})
	if err != nil {
		return nil, backend.Unavailable("read chunks of "+f.Version, err)
	}
	out := make([][]byte, len(idx))
	for i, c := range idx {
		b, _ := cmds[i].Bytes()
		off, end, _ := f.manifest.ChunkBounds(c)
		if int64(len(b)) != end-off {
			return nil, fmt.Errorf("read chunk %d of %s: %d bytes stored, want %d", c, f.Version, len(b), end-off)
		}
		out[i] = b
	}
	return out, nil
}

// LoadOrCreateKey loads the firmware-signing key from dir
// (fota.PrivateKeyFile), or generates a pair there when there is none.
// created reports the latter, so the caller can say so loudly.
func LoadOrCreateKey(dir string, random io.Reader) (key ed25519.PrivateKey, created bool, err error) {
	path := filepath.Join(dir, wire.PrivateKeyFile)
	key, err = wire.LoadPrivateKey(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("firmware key: %w", err)
	}
	_, key, err = wire.GenerateKey(random)
	if err != nil {
		return nil, false, fmt.Errorf("firmware key: %w", err)
	}
	if _, _, err := wire.WriteKeyPair(dir, key); err != nil {
		return nil, false, fmt.Errorf("firmware key: %w", err)
	}
	return key, true, nil
}
