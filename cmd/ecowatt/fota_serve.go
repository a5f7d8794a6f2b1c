package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/fota"
	"github.com/ecowatt/ecowatt/backend/store"
	wire "github.com/ecowatt/ecowatt/topics/fota"
)

// fotaConfig are serve's flags for firmware updates.
type fotaConfig struct {
	chunkSize      int
	updateTimeout  time.Duration
	manifestResend time.Duration
	sweep          time.Duration
	leaseTTL       time.Duration
	imageCacheMiB  int
	chunkRate      string // bytes/s, parseByteSize syntax
	chunkBurst     string
}

func (c *fotaConfig) register(fs *flag.FlagSet) {
	fs.IntVar(&c.chunkSize, "chunk-size", wire.DefaultChunkSize, "firmware chunk size in bytes of manifests the server builds (1024-32768)")
	fs.DurationVar(&c.updateTimeout, "fota-update-timeout", fota.DefaultUpdateTimeout, "a device update without progress for this long fails (timed_out)")
	fs.DurationVar(&c.manifestResend, "fota-manifest-resend", fota.DefaultManifestResend, "a device update without progress for this long gets its manifest again")
	fs.DurationVar(&c.sweep, "fota-sweep", fota.DefaultSweepInterval, "how often rollouts advance and stalled updates are looked for")
	fs.IntVar(&c.imageCacheMiB, "fota-image-cache", fota.DefaultImageCacheBytes>>20, "MiB of firmware images held in memory to serve chunks from (0: none, every chunk is read from Redis)")
	fs.StringVar(&c.chunkRate, "fota-chunk-rate", "1MiB", "firmware bytes per second served to one device (token-bucket refill), e.g. 256KiB")
	fs.StringVar(&c.chunkBurst, "fota-chunk-burst", "2MiB", "firmware bytes one device may be served at once (token-bucket size, at least 32KiB: one largest chunk)")
	fs.DurationVar(&c.leaseTTL, "fota-lease", fota.DefaultLeaseTTL, "lifetime of the Redis lease that makes one replica advance rollouts")
}

// newFOTA loads (or on first start creates) the firmware-signing key in
// dataDir and builds the FOTA service on svc with its handlers attached.
func newFOTA(c fotaConfig, dataDir string, rdb redis.UniversalClient, keys store.Keys, replica string, svc *backend.Service, log zerolog.Logger, reg prometheus.Registerer) (*fota.Service, error) {
	if c.chunkSize < wire.MinChunkSize || c.chunkSize > wire.MaxChunkSize {
		return nil, usageError{fmt.Sprintf("--chunk-size %d: want %d-%d bytes", c.chunkSize, wire.MinChunkSize, wire.MaxChunkSize)}
	}
	if c.imageCacheMiB < 0 {
		return nil, usageError{fmt.Sprintf("--fota-image-cache %d: want 0 or more MiB", c.imageCacheMiB)}
	}
	imageCache := int64(c.imageCacheMiB) << 20
	if imageCache == 0 {
		imageCache = -1 // fota.Config: negative is no cache
	}
	rate, burst, err := c.chunkLimits()
	if err != nil {
		return nil, err
	}
	key, created, err := fota.LoadOrCreateKey(dataDir, rand.Reader)
	if err != nil {
		return nil, err
	}
	if created {
		log.Warn().Str("private", filepath.Join(dataDir, wire.PrivateKeyFile)).Str("public", filepath.Join(dataDir, wire.PublicKeyFile)).
			Msg("generated a firmware-signing key pair; give devices the public key (ecowatt fota pubkey) and back up the private key")
	}
	f, err := fota.New(fota.Config{
		Redis: rdb, Keys: keys, Fleet: svc, Key: key, Registerer: reg, Replica: replica,
		Logger:    log,
		ChunkSize: c.chunkSize, UpdateTimeout: c.updateTimeout, ManifestResend: c.manifestResend,
		SweepInterval: c.sweep, LeaseTTL: c.leaseTTL, ImageCacheBytes: imageCache,
		ChunkRate: rate, ChunkBurst: burst,
	})
	if err != nil {
		return nil, err
	}
	f.Attach()
	return f, nil
}

// chunkLimits reads --fota-chunk-rate and --fota-chunk-burst. A burst
// below one largest chunk would refuse every request for such a chunk
// forever, so it is a usage error.
func (c fotaConfig) chunkLimits() (rate, burst int64, err error) {
	if rate, err = parseByteSize(c.chunkRate); err != nil {
		return 0, 0, usageError{fmt.Sprintf("--fota-chunk-rate %q: %v", c.chunkRate, err)}
	}
	if burst, err = parseByteSize(c.chunkBurst); err != nil {
		return 0, 0, usageError{fmt.Sprintf("--fota-chunk-burst %q: %v", c.chunkBurst, err)}
	}
	if burst < wire.MaxChunkSize {
		return 0, 0, usageError{fmt.Sprintf("--fota-chunk-burst %q: want at least %d bytes (one largest chunk)", c.chunkBurst, wire.MaxChunkSize)}
	}
	return rate, burst, nil
}
