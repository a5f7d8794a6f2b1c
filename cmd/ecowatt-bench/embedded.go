package main

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/broker"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// memAuth is an in-memory broker.DeviceAuth and broker.OperatorAuth: the
// bench's devices and one admin account, the ACL-checked subscriber.
type memAuth struct {
	devices       map[string]*envelope.Keys // read-only after newMemAuth
	subUser       string
	subPassword   string
	deviceIDs     []string          // sorted
	deviceSecrets map[string]string // id -> hex PSK, for the keys file
}

var (
	_ broker.DeviceAuth   = (*memAuth)(nil)
	_ broker.OperatorAuth = (*memAuth)(nil)
)

func (a *memAuth) DeviceKeys(_ context.Context, id string) (*envelope.Keys, error) {
	if k, ok := a.devices[id]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("device %q: %w", id, broker.ErrUnknownDevice)
}

func (a *memAuth) AuthenticateOperator(_ context.Context, name, password string) (topics.Role, error) {
	if name != a.subUser {
		return "", fmt.Errorf("operator %q: %w", name, broker.ErrUnknownOperator)
	}
	if subtle.ConstantTimeCompare([]byte(password), []byte(a.subPassword)) != 1 {
		return "", fmt.Errorf("operator %q: wrong password", name)
	}
	return topics.RoleAdmin, nil
}

// newMemAuth provisions n devices PREFIX-0001... with PSKs read from rnd.
func newMemAuth(n int, prefix, subUser, subPassword string, rnd io.Reader) (*memAuth, error) {
	a := &memAuth{devices: map[string]*envelope.Keys{}, deviceSecrets: map[string]string{},
		subUser: subUser, subPassword: subPassword}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("%s-%04d", prefix, i)
		if err := topics.ValidateID(id); err != nil {
			return nil, fmt.Errorf("provision: %w", err)
		}
		psk := make([]byte, 32)
		if _, err := io.ReadFull(rnd, psk); err != nil {
			return nil, fmt.Errorf("provision %s: psk: %w", id, err)
		}
		k, err := envelope.DeriveKeys(psk)
		if err != nil {
			return nil, fmt.Errorf("provision %s: %w", id, err)
		}
		a.devices[id], a.deviceSecrets[id] = &k, hex.EncodeToString(psk)
		a.deviceIDs = append(a.deviceIDs, id)
	}
	if err := topics.ValidateID(subUser); err == nil && a.devices[subUser] != nil {
		return nil, fmt.Errorf("provision: subscriber %q is also a device", subUser)
	}
	return a, nil
}

// benchBroker is the embedded EcoWatt broker alone, device auth and ACL on,
// plus the relay that stands in for the backend: every device message on
// ecowatt/v1/dev/{id}/up/# is republished in-process on
// ecowatt/v1/events/{id}/presence, the only place an operator may read.
type benchBroker struct {
	srv    *broker.Server
	cancel context.CancelFunc
}

// startBenchBroker starts the broker on ln with auth a.
func startBenchBroker(ctx context.Context, ln net.Listener, a *memAuth, log zerolog.Logger) (*benchBroker, error) {
	srv, err := broker.New(broker.Config{MQTTListener: ln, Devices: a, Operators: a, Logger: log})
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("bench broker: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	b := &benchBroker{srv: srv, cancel: cancel}
	relay := func(m broker.Message) {
		t, err := topics.Parse(m.Topic)
		if err != nil {
			return // the ACL admits only valid device topics
		}
		if err := srv.Publish(ctx, topics.Event(t.Device, topics.EventPresence), m.Payload, 1); err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Str("topic", m.Topic).Msg("relay failed")
		}
	}
	if err := srv.Subscribe(topics.FilterAllUp, relay); err != nil {
		b.Close()
		return nil, fmt.Errorf("bench broker: %w", err)
	}
	if err := srv.Start(); err != nil {
		b.Close()
		return nil, fmt.Errorf("bench broker: %w", err)
	}
	return b, nil
}

// URL is the broker's tcp:// URL.
func (b *benchBroker) URL() string { return "tcp://" + b.srv.Addr().String() }

// Close stops the relay and the broker; it is safe twice.
func (b *benchBroker) Close() {
	b.cancel()
	_ = b.srv.Close()
}

// runBroker is `ecowatt-bench broker`: the bench broker as its own
// process, so that it and Mosquitto are each loaded from outside.
func runBroker(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "broker", "broker --keys-out FILE [flags]")
	listen := fs.String("listen", "127.0.0.1:0", "MQTT listen address (loopback)")
	n := fs.Int("devices", 100, "devices to provision")
	prefix := fs.String("prefix", "bench", "device ID prefix")
	keysOut := fs.String("keys-out", "", `write {"ID":"hex PSK"} here, the format of ecowatt device add --keys-out`)
	subUser := fs.String("sub-user", "bench-sub", "the subscriber's (admin operator's) name")
	subPassword := fs.String("sub-password", "", "the subscriber's password (required)")
	ready := fs.String("ready-file", "", `write {"mqtt":"host:port"} here once listening`)
	pprofAddr := fs.String("pprof", "", "serve /debug/pprof/ on this loopback address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keysOut == "" || *subPassword == "" || *n <= 0 || *n > 100_000 {
		return usageError{"broker: --keys-out and --sub-password are required; --devices 1..100000"}
	}
	for _, addr := range []string{*listen, *pprofAddr} {
		if err := checkLoopbackAddr(addr); err != nil {
			return usageError{"broker: " + err.Error()}
		}
	}
	a, err := newMemAuth(*n, *prefix, *subUser, *subPassword, e.rand)
	if err != nil {
		return err
	}
	if err := writeJSON(*keysOut, a.deviceSecrets, 0o600); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("broker: listen: %w", err)
	}
	log := zerolog.New(e.stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	b, err := startBenchBroker(ctx, ln, a, log)
	if err != nil {
		return err
	}
	defer b.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	if *pprofAddr != "" {
		srv, err := servePprof(*pprofAddr, &wg)
		if err != nil {
			return err
		}
		defer func() { _ = srv.Close() }()
	}
	if *ready != "" {
		if err := writeJSON(*ready, map[string]string{"mqtt": b.srv.Addr().String()}, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stdout, "ecowatt-bench broker: %s, %d devices, keys in %s\n", b.URL(), *n, *keysOut)
	<-ctx.Done()
	return nil
}

// servePprof serves the pprof handlers on addr; wg waits for the server.
func servePprof(addr string, wg *sync.WaitGroup) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof: listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	wg.Go(func() { _ = srv.Serve(ln) })
	return srv, nil
}

// checkLoopbackAddr accepts "" or a host:port on a loopback IP.
func checkLoopbackAddr(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q: listen on a loopback IP such as 127.0.0.1", addr)
	}
	return nil
}

// writeJSON writes v to path atomically.
func writeJSON(path string, v any, perm os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readKeys reads a keys file: {"ID":"hex PSK"}.
func readKeys(path string) (map[string]*envelope.Keys, []string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read keys: %w", err)
	}
	var raw map[string]string
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, nil, fmt.Errorf("read keys %s: %w", path, err)
	}
	keys := make(map[string]*envelope.Keys, len(raw))
	ids := make([]string, 0, len(raw))
	for id, h := range raw {
		psk, err := hex.DecodeString(h)
		if err != nil {
			return nil, nil, fmt.Errorf("read keys %s: device %s: %w", path, id, err)
		}
		k, err := envelope.DeriveKeys(psk)
		if err != nil {
			return nil, nil, fmt.Errorf("read keys %s: device %s: %w", path, id, err)
		}
		keys[id] = &k
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, nil, errors.New("read keys " + path + ": no devices")
	}
	slices.Sort(ids)
	return keys, ids, nil
}
