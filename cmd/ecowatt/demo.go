package main

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/devicesim"
)

// demoFleet provisions n devices (demo-0001...) and runs them in-process
// against the embedded broker until ctx ends, so that `ecowatt serve --demo
// N` shows a live fleet at once. Keys are kept in the data dir so that a
// demo on a durable Redis can be restarted.
type demoFleet struct {
	n       int
	svc     *backend.Service
	broker  string // tcp://host:port of the embedded broker
	dataDir string
	log     zerolog.Logger
	// setup wires device features; it may add FOTA when a public key is known.
	setup func(*devicesim.Device) error
}

func (d demoFleet) run(ctx context.Context) error {
	keysFile := filepath.Join(d.dataDir, "demo-keys.json")
	stored := map[string]string{}
	if err := readKeys(keysFile, stored); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	stateRoot := filepath.Join(d.dataDir, "demo-state")
	keys := map[string][]byte{}
	for i := 1; i <= d.n; i++ {
		id := fmt.Sprintf("demo-%04d", i)
		psk, err := d.svc.Provision(ctx, id)
		switch {
		case err == nil:
			// A new device starts with blank flash, whatever an earlier
			// demo on a non-durable store left behind.
			stored[id] = hex.EncodeToString(psk)
			if err := os.RemoveAll(devicesim.StateDir(stateRoot, id)); err != nil {
				return fmt.Errorf("demo: %w", err)
			}
		case errors.Is(err, backend.ErrConflict) && stored[id] != "":
		case errors.Is(err, backend.ErrConflict):
			d.log.Warn().Str("device", id).Msg("demo device exists but its key is not in demo-keys.json; skipped")
			continue
		default:
			return fmt.Errorf("demo: provision %s: %w", id, err)
		}
		k, err := hex.DecodeString(stored[id])
		if err != nil {
			return fmt.Errorf("demo: key of %s: %w", id, err)
		}
		keys[id] = k
	}
	if err := writeKeys(keysFile, stored); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if len(keys) == 0 {
		return errors.New("demo: no devices to run")
	}
	last := -1
	fleet, err := devicesim.NewFleet(devicesim.FleetConfig{
		Keys:      keys,
		StateRoot: stateRoot,
		Device: devicesim.Config{
			Broker:          d.broker,
			FirmwareVersion: "1.0.0",
			Log:             d.log.Level(zerolog.WarnLevel),
		},
		StartSpread:      2 * time.Second,
		Setup:            d.setup,
		ProgressInterval: time.Second,
		Progress: func(s devicesim.FleetStatus) {
			if s.Online != last {
				last = s.Online
				d.log.Info().Int("online", s.Online).Int("total", s.Total).Msg("demo fleet")
			}
		},
	})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.log.Info().Int("devices", len(keys)).Str("keys", keysFile).Msg("demo fleet starting")
	if err := fleet.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// demoSetup gives demo devices every feature, sampling every 5 s and
// uploading every 15 s (the simulator defaults), and the server's
// firmware-signing public key so that rollouts work from the dashboard.
func demoSetup(pub ed25519.PublicKey) func(*devicesim.Device) error {
	return func(d *devicesim.Device) error {
		_, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{FOTA: devicesim.FOTAOptions{PublicKey: pub}})
		return err
	}
}

// loopback turns a listener address such as [::]:1883 into one a local
// client can dial.
func loopback(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
