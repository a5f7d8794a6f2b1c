// Command devicesim runs a fleet of simulated EcoWatt gateways against a
// broker: every device in the keys file (as written by `ecowatt device add
// --keys-out`) boots from its own state directory, connects with its
// password token, publishes a signed birth and stays online until SIGINT or
// SIGTERM. With --fota-pubkey the devices accept firmware updates signed by
// the matching key.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/cmd/internal/flagenv"
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/topics/fota"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "devicesim:", err)
		if _, ok := errors.AsType[flagenv.UsageError](err); ok {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// options are the parsed flags.
type options struct {
	broker         string
	ca             string
	keys           string
	stateDir       string
	firmware       string
	logLevel       string
	inverterFaults string
	maxConnecting  int
	startSpread    time.Duration
	fotaPubKey     string
	fotaSlotSize   int64
	fotaPowerCut   int
}

// parseArgs reads the flags and their ECOWATT_* variables; -h prints the
// usage to stdout and returns flag.ErrHelp.
func parseArgs(args []string, getenv func(string) string, stdout, stderr io.Writer) (options, error) {
	var o options
	fs := flagenv.New("devicesim", "devicesim [flags]")
	fs.StringVar(&o.broker, "broker", "tcp://127.0.0.1:1883", "broker URL: tcp://host:port, or ssl://host:port with --ca")
	fs.StringVar(&o.ca, "ca", "", "PEM file of the CA that signed the broker's certificate (ssl://)")
	fs.StringVar(&o.keys, "keys", "keys.json", `keys file: {"ID":"hex PSK",...}`)
	fs.StringVar(&o.stateDir, "state-dir", "devicesim-state", "root of the per-device flash directories")
	fs.StringVar(&o.firmware, "firmware-version", devicesim.DefaultFirmwareVersion, "factory firmware version of devices with blank flash")
	fs.StringVar(&o.logLevel, "log-level", "warn", "debug, info, warn or error")
	fs.StringVar(&o.inverterFaults, "inverter-faults", "", "inverter fault rates, e.g. crc=0.02,drop=0.01,delay=0.01")
	fs.IntVar(&o.maxConnecting, "max-connecting", devicesim.DefaultMaxConnecting, "concurrent connection attempts")
	fs.DurationVar(&o.startSpread, "start-spread", 2*time.Second, "devices start at random offsets within this duration")
	fs.StringVar(&o.fotaPubKey, "fota-pubkey", "", "firmware-signing public key (PEM, from 'ecowatt keys gen'); without it every firmware update is refused")
	fs.Int64Var(&o.fotaSlotSize, "fota-slot-size", devicesim.DefaultSlotSize, "bytes per firmware slot (A/B)")
	fs.IntVar(&o.fotaPowerCut, "fota-power-cut", 0, "fault: cut each device's power once, while it writes the N-th firmware chunk (0: never)")
	pos, err := flagenv.Parse(fs, args, getenv, stdout, stderr)
	if err == nil && len(pos) > 0 {
		err = flagenv.UsageError{Msg: fmt.Sprintf("unexpected argument %q", pos[0])}
	}
	return o, err
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	stderr = &syncWriter{w: stderr}
	o, err := parseArgs(args, getenv, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	level, err := zerolog.ParseLevel(o.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := zerolog.New(stderr).Level(level).With().Timestamp().Logger()
	wire, err := newWiring(o.inverterFaults)
	if err != nil {
		return fmt.Errorf("--inverter-faults: %w", err)
	}
	if o.fotaPubKey != "" {
		if wire.fota.PublicKey, err = fota.LoadPublicKey(o.fotaPubKey); err != nil {
			return fmt.Errorf("--fota-pubkey: %w", err)
		}
	}
	if o.fotaPowerCut < 0 {
		return fmt.Errorf("--fota-power-cut %d: want a chunk number, or 0", o.fotaPowerCut)
	}
	wire.fota.SlotSize, wire.powerCut = o.fotaSlotSize, o.fotaPowerCut
	f, err := os.Open(o.keys)
	if err != nil {
		return fmt.Errorf("--keys: %w", err)
	}
	keys, err := devicesim.LoadKeys(f)
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("--keys %s: %w", o.keys, err)
	}
	tlsConf, err := brokerTLS(o.broker, o.ca)
	if err != nil {
		return err
	}

	prog := &progress{w: stderr}
	fleet, err := devicesim.NewFleet(devicesim.FleetConfig{
		Keys:      keys,
		StateRoot: o.stateDir,
		Device: devicesim.Config{
			Broker:          o.broker,
			TLS:             tlsConf,
			FirmwareVersion: o.firmware,
			Log:             log,
		},
		MaxConnecting: o.maxConnecting,
		StartSpread:   o.startSpread,
		Setup:         wire.setup,
		Progress:      prog.update,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "devicesim: starting %d devices against %s (state in %s)\n", len(keys), o.broker, o.stateDir)
	runErr := fleet.Run(ctx)
	s := fleet.Status()
	fmt.Fprintf(stdout, "devicesim: stopped %d devices: peak online %d, %d connects, %d reconnects, "+
		"%d messages sent, %d publish errors, %d downlinks handled, %d rejected, %d dropped\n",
		s.Total, prog.peakOnline(), s.Connects, s.Reconnects, s.Sent, s.PublishErrors, s.Received, s.Rejected, s.Dropped)
	return runErr
}

// brokerTLS returns the TLS config for an ssl:// broker: the system roots,
// or the CA in caFile.
func brokerTLS(broker, caFile string) (*tls.Config, error) {
	secure := false
	for _, p := range []string{"ssl://", "tls://", "mqtts://", "tcps://"} {
		secure = secure || strings.HasPrefix(broker, p)
	}
	if !secure {
		if caFile != "" {
			return nil, fmt.Errorf("--ca given but --broker %s is not ssl://", broker)
		}
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificates", caFile)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// progress prints "online N/M" whenever the count changes.
type progress struct {
	w io.Writer

	mu   sync.Mutex // guards last and peak
	last int
	peak int
}

func (p *progress) update(s devicesim.FleetStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.peak = max(p.peak, s.Online)
	if s.Online == p.last {
		return
	}
	p.last = s.Online
	fmt.Fprintf(p.w, "devicesim: online %d/%d (reconnects %d, sent %d, rejected %d)\n",
		s.Online, s.Total, s.Reconnects, s.Sent, s.Rejected)
}

func (p *progress) peakOnline() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak
}

// syncWriter serialises writes from the loggers of many devices.
type syncWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
