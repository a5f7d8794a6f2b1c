// Package devicesim simulates EcoWatt gateways (ESP32 firmware stand-ins).
// A Device boots from its flash (package flash), connects to the broker
// with a fresh password token at every (re)connect, publishes a signed
// birth, verifies every downlink (MAC and anti-replay window) before it
// dispatches it to a registered handler, and reconnects with jittered
// exponential backoff. A Fleet runs many devices in one process.
//
// Features plug into a Device before Run: Handle registers a downlink
// handler for one kind, Publish seals and sends an uplink, Go starts a
// background task for each boot, OnBoot and OnBirth let the bootloader and
// config code adjust boot metadata and birth contents, OnConnect learns of
// each (re)connect, Reboot restarts the firmware in place, and UpdateBoot
// changes the boot record (slots, boot order) while the firmware runs.
package devicesim

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// ErrOffline is returned by Publish while the device is not connected.
var ErrOffline = errors.New("device offline")

// Defaults for Config fields left zero.
const (
	DefaultFirmwareVersion = "1.0.0"
	DefaultNonceBlock      = 64
	DefaultMinBackoff      = 500 * time.Millisecond
	DefaultMaxBackoff      = 30 * time.Second
	DefaultConnectTimeout  = 10 * time.Second
	DefaultKeepAlive       = 30 * time.Second
	DefaultPublishTimeout  = 10 * time.Second
	DefaultInboxSize       = 64
)

// Config describes one device. ID, Key, Broker and either StateDir or Flash
// are required; everything else has a default.
type Config struct {
	ID     string
	Key    []byte // 32-byte PSK
	Broker string // tcp://host:port or ssl://host:port
	TLS    *tls.Config

	StateDir string       // flash directory; ignored when Flash is set
	Flash    *flash.Store // pre-opened flash (tests inject faults through it)

	// FirmwareVersion is the factory image: it is used only when the flash
	// holds no boot record yet. After that the boot record wins (FOTA).
	FirmwareVersion string

	Clock   clock.Clock // default clock.Real{}
	Rand    rand.Source // backoff jitter; default seeded from crypto/rand
	Entropy io.Reader   // AES-GCM IVs when Encrypt; default crypto/rand
	Log     zerolog.Logger
	Encrypt bool // encrypt uplink bodies (the MAC is always there)

	NonceBlock     uint64        // nonces reserved per flash write
	MinBackoff     time.Duration // first reconnect delay (before jitter)
	MaxBackoff     time.Duration // reconnect delay cap
	ConnectTimeout time.Duration
	KeepAlive      time.Duration
	PublishTimeout time.Duration // how long Publish waits for the PUBACK
	InboxSize      int           // downlinks buffered before they are dropped
	CleanSession   *bool         // default true, as ESP-MQTT does

	// Gate bounds concurrent connection attempts across a fleet; nil means
	// unbounded.
	Gate Gate
}

// Gate limits how many devices connect at once.
type Gate interface {
	Acquire(ctx context.Context) error
	Release()
}

// Handler handles one verified downlink message. Its error is logged and
// counted; the message is never redelivered to it by the device.
type Handler func(ctx context.Context, m envelope.Message) error

// Stats are a device's counters.
type Stats struct {
	Online          bool
	BootCount       int64
	Connects        int64 // successful connections
	Reconnects      int64 // successful connections after a lost one
	ConnectFailures int64
	Sent            int64 // uplinks acknowledged by the broker
	PublishErrors   int64
	Received        int64 // downlinks verified and dispatched
	Rejected        int64 // downlinks refused: bad topic, MAC, replay, ...
	Dropped         int64 // downlinks dropped because the inbox was full
	HandlerErrors   int64
	Unhandled       int64 // verified downlinks of a kind with no handler
}

// Device is one simulated gateway. Register handlers and hooks, then Run.
type Device struct {
	cfg   Config
	id    string
	fl    *flash.Store
	clk   clock.Clock
	log   zerolog.Logger
	inbox chan inbound

	randMu sync.Mutex // guards rnd
	rnd    *rand.Rand

	hookMu    sync.Mutex // guards handlers, services, onBoot, onBirth, onConnect
	handlers  map[string]Handler
	services  []service
	onBoot    []func(*BootRecord) error
	onBirth   []func(*topics.Birth)
	onConnect []func(context.Context)

	bootMu sync.Mutex // serialises UpdateBoot (read, persist, replace boot)

	mu       sync.Mutex // guards running, client, boot, bootedAt, nonces, reboot
	running  bool
	client   mqtt.Client // nil unless connected and born
	boot     BootRecord
	bootedAt time.Time
	nonces   *nonces
	reboot   context.CancelCauseFunc // cancels the current boot session

	rxMu     sync.Mutex // guards rxWindow; held while a downlink is checked and persisted
	rxWindow envelope.RankWindow

	keyMu sync.Mutex // guards ring; held while a key change is persisted (rotate.go)
	ring  keyRing

	online                                                 atomic.Bool
	connects, reconnects, connectFailures, sent, pubErrors atomic.Int64
	received, rejected, dropped, handlerErrors, unhandled  atomic.Int64
}

type service struct {
	name string
	fn   func(ctx context.Context) error
}

type inbound struct {
	topic   string
	payload []byte
}

// New checks cfg, opens the flash and returns a Device ready to Run.
func New(cfg Config) (*Device, error) {
	if err := topics.ValidateID(cfg.ID); err != nil {
		return nil, fmt.Errorf("new device: %w", err)
	}
	_, err := envelope.DeriveKeys(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("new device %s: %w", cfg.ID, err)
	}
	if cfg.Broker == "" {
		return nil, fmt.Errorf("new device %s: no broker", cfg.ID)
	}
	fl := cfg.Flash
	if fl == nil {
		if cfg.StateDir == "" {
			return nil, fmt.Errorf("new device %s: no state dir", cfg.ID)
		}
		if fl, err = flash.Open(cfg.StateDir); err != nil {
			return nil, fmt.Errorf("new device %s: %w", cfg.ID, err)
		}
	}
	setDefaults(&cfg)
	if cfg.Rand == nil {
		var seed [16]byte
		_, _ = crand.Read(seed[:])
		cfg.Rand = rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:]))
	}
	d := &Device{
		cfg:      cfg,
		id:       cfg.ID,
		fl:       fl,
		clk:      cfg.Clock,
		log:      cfg.Log.With().Str("device", cfg.ID).Logger(),
		inbox:    make(chan inbound, cfg.InboxSize),
		rnd:      rand.New(cfg.Rand),
		handlers: map[string]Handler{},
	}
	d.handlers[topics.KindRotateKey] = d.handleRotateKey
	d.handlers[topics.KindKeyConfirm] = d.handleKeyConfirm
	return d, d.loadKeys()
}

func setDefaults(c *Config) {
	if c.FirmwareVersion == "" {
		c.FirmwareVersion = DefaultFirmwareVersion
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	if c.Entropy == nil {
		c.Entropy = crand.Reader
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.MinBackoff, DefaultMinBackoff)
	def(&c.MaxBackoff, DefaultMaxBackoff)
	def(&c.ConnectTimeout, DefaultConnectTimeout)
	def(&c.KeepAlive, DefaultKeepAlive)
	def(&c.PublishTimeout, DefaultPublishTimeout)
	if c.NonceBlock == 0 {
		c.NonceBlock = DefaultNonceBlock
	}
	if c.InboxSize <= 0 {
		c.InboxSize = DefaultInboxSize
	}
}

// ID is the device ID.
func (d *Device) ID() string { return d.id }

// Flash is the device's flash, for features that keep their own records.
func (d *Device) Flash() *flash.Store { return d.fl }

// Boot returns the boot record of the current boot.
func (d *Device) Boot() BootRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.boot.Clone()
}

// UpdateBoot changes the boot record while the firmware runs (FOTA: slot
// states, the slot to boot next): fn edits a copy, which is persisted
// atomically before it replaces the current record. The change takes
// effect for the birth at once and for the boot order at the next boot.
// If fn or the flash write fails, nothing changes.
func (d *Device) UpdateBoot(fn func(*BootRecord) error) error {
	d.bootMu.Lock()
	defer d.bootMu.Unlock()
	b := d.Boot()
	if err := fn(&b); err != nil {
		return err
	}
	if err := d.fl.Save(RecordBoot, b); err != nil {
		return fmt.Errorf("update boot record: %w", err)
	}
	d.mu.Lock()
	d.boot = b
	d.mu.Unlock()
	return nil
}

// Handle registers h for downlinks of kind (topics.KindConfig, ...),
// replacing any earlier one. Call it before Run.
func (d *Device) Handle(kind string, h Handler) {
	d.hookMu.Lock()
	d.handlers[kind] = h
	d.hookMu.Unlock()
}

// Go registers a background task started after every boot and cancelled on
// shutdown or reboot; Run waits for it. A task that returns a non-nil error
// (other than its context's) stops the device with that error.
func (d *Device) Go(name string, fn func(ctx context.Context) error) {
	d.hookMu.Lock()
	d.services = append(d.services, service{name, fn})
	d.hookMu.Unlock()
}

// OnBoot registers a bootloader hook. At every boot it may change the boot
// record (slot, version, pending-verify) before it is persisted with the
// incremented boot count; an error aborts the boot and Run.
func (d *Device) OnBoot(fn func(*BootRecord) error) {
	d.hookMu.Lock()
	d.onBoot = append(d.onBoot, fn)
	d.hookMu.Unlock()
}

// OnBirth registers a hook that fills in birth fields it owns (e.g. the
// config version) before each birth is sealed.
func (d *Device) OnBirth(fn func(*topics.Birth)) {
	d.hookMu.Lock()
	d.onBirth = append(d.onBirth, fn)
	d.hookMu.Unlock()
}

// OnConnect registers a hook called after every (re)connect, once the
// birth is out. It runs on the connection loop, so it must not block:
// hand long work (a backlog upload, a FOTA resume) to a Go task.
func (d *Device) OnConnect(fn func(ctx context.Context)) {
	d.hookMu.Lock()
	d.onConnect = append(d.onConnect, fn)
	d.hookMu.Unlock()
}

// Reboot restarts the firmware: the connection drops, tasks stop, and Run
// boots again (boot count + 1) without returning. It is a no-op when the
// device is not running.
func (d *Device) Reboot(reason string) {
	d.mu.Lock()
	cancel := d.reboot
	d.mu.Unlock()
	if cancel != nil {
		cancel(rebootError{reason})
	}
}

type rebootError struct{ reason string }

func (e rebootError) Error() string { return "reboot: " + e.reason }

// Online reports whether the device is connected and has sent its birth.
func (d *Device) Online() bool { return d.online.Load() }

// Stats returns a snapshot of the counters.
func (d *Device) Stats() Stats {
	return Stats{
		Online:          d.online.Load(),
		BootCount:       d.Boot().BootCount,
		Connects:        d.connects.Load(),
		Reconnects:      d.reconnects.Load(),
		ConnectFailures: d.connectFailures.Load(),
		Sent:            d.sent.Load(),
		PublishErrors:   d.pubErrors.Load(),
		Received:        d.received.Load(),
		Rejected:        d.rejected.Load(),
		Dropped:         d.dropped.Load(),
		HandlerErrors:   d.handlerErrors.Load(),
		Unhandled:       d.unhandled.Load(),
	}
}

// Run boots the device and keeps it online until ctx is done, rebooting in
// place when asked to. It returns nil after a clean shutdown, once every
// goroutine it started has exited.
func (d *Device) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.running {
		d.mu.Unlock()
		return fmt.Errorf("device %s: already running", d.id)
	}
	d.running = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.running = false
		d.mu.Unlock()
	}()
	for {
		err := d.session(ctx)
		var rb rebootError
		if errors.As(err, &rb) {
			d.log.Info().Str("reason", rb.reason).Msg("rebooting")
			continue
		}
		return err
	}
}

// session is one boot: from power-on to shutdown or reboot.
func (d *Device) session(ctx context.Context) error {
	if err := d.powerOn(); err != nil {
		return fmt.Errorf("device %s: boot: %w", d.id, err)
	}
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	d.mu.Lock()
	d.reboot = cancel
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.reboot = nil
		d.mu.Unlock()
	}()

	d.hookMu.Lock()
	tasks := append([]service{{"connection", d.connLoop}, {"downlink", d.dispatch}}, d.services...)
	d.hookMu.Unlock()
	var wg sync.WaitGroup
	for _, t := range tasks {
		wg.Go(func() {
			err := t.fn(sctx)
			if err != nil && sctx.Err() == nil {
				cancel(fmt.Errorf("%s: %w", t.name, err))
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	if err := context.Cause(sctx); err != nil {
		var rb rebootError
		if errors.As(err, &rb) {
			return err
		}
		return fmt.Errorf("device %s: %w", d.id, err)
	}
	return nil
}

// powerOn loads the flash state of a fresh boot and counts the boot.
func (d *Device) powerOn() error {
	var b BootRecord
	if err := loadRecord(d.fl, RecordBoot, &b); err != nil {
		return fmt.Errorf("load boot record: %w", err)
	}
	if b.FirmwareVersion == "" {
		b.FirmwareVersion = d.cfg.FirmwareVersion
	}
	if b.ActiveSlot == "" {
		b.ActiveSlot = SlotA
	}
	b.BootCount++
	d.hookMu.Lock()
	hooks := d.onBoot
	d.hookMu.Unlock()
	for _, h := range hooks {
		if err := h(&b); err != nil {
			return fmt.Errorf("boot hook: %w", err)
		}
	}
	if err := d.fl.Save(RecordBoot, b); err != nil {
		return fmt.Errorf("save boot record: %w", err)
	}
	if err := d.loadKeys(); err != nil {
		return err
	}
	n, err := newNonces(d.fl, d.cfg.NonceBlock)
	if err != nil {
		return err
	}
	var w rxWindowRecord
	if err := loadRecord(d.fl, RecordRxWindow, &w); err != nil {
		return fmt.Errorf("load rx window: %w", err)
	}
	d.rxMu.Lock()
	d.rxWindow = w.window()
	d.rxMu.Unlock()
	d.mu.Lock()
	d.boot, d.bootedAt, d.nonces = b, d.clk.Now(), n
	d.mu.Unlock()
	d.log.Info().Int64("boot_count", b.BootCount).Str("firmware", b.FirmwareVersion).
		Str("slot", b.ActiveSlot).Uint64("next_nonce", n.peek()).Msg("booted")
	return nil
}

// Publish seals body (a value marshalled to JSON, or json.RawMessage /
// []byte used as is) for the uplink topic of kind and publishes it at QoS 1,
// waiting for the broker's acknowledgement. It returns ErrOffline when the
// device is not connected; callers that must not lose data keep it and
// retry after OnConnect.
func (d *Device) Publish(ctx context.Context, kind string, body any) error {
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	if c == nil {
		return fmt.Errorf("publish %s: %w", kind, ErrOffline)
	}
	return d.publishOn(ctx, c, kind, body)
}

func (d *Device) publishOn(ctx context.Context, c mqtt.Client, kind string, body any) error {
	topic := topics.DeviceUp(d.id, kind)
	if _, err := topics.Parse(topic); err != nil {
		return fmt.Errorf("publish %s: %w", kind, err)
	}
	var raw []byte
	switch b := body.(type) {
	case json.RawMessage:
		raw = b
	case []byte:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return fmt.Errorf("publish %s: %w", kind, err)
		}
	}
	d.mu.Lock()
	n := d.nonces
	d.mu.Unlock()
	nonce, err := n.take()
	if err != nil {
		d.pubErrors.Add(1)
		return fmt.Errorf("publish %s: %w", kind, err)
	}
	sealed, err := envelope.Seal(d.sealKeys(), topic, nonce, d.clk.Now(), raw, d.cfg.Encrypt, d.cfg.Entropy)
	if err != nil {
		d.pubErrors.Add(1)
		return fmt.Errorf("publish %s: %w", kind, err)
	}
	if err := d.wait(ctx, c.Publish(topic, 1, false, sealed), d.cfg.PublishTimeout); err != nil {
		d.pubErrors.Add(1)
		return fmt.Errorf("publish %s nonce %d: %w", kind, nonce, err)
	}
	d.sent.Add(1)
	return nil
}

// wait waits for a paho token, ctx or the timeout (network time, not the
// device clock).
func (d *Device) wait(ctx context.Context, t mqtt.Token, timeout time.Duration) error {
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return fmt.Errorf("no acknowledgement after %s", timeout)
	}
}

// birth builds the birth message for now.
func (d *Device) birth(online bool) topics.Birth {
	d.mu.Lock()
	b := topics.Birth{
		Online:          online,
		FirmwareVersion: d.boot.FirmwareVersion,
		BootCount:       d.boot.BootCount,
		UptimeSeconds:   int64(d.clk.Now().Sub(d.bootedAt) / time.Second),
		Slot:            d.boot.ActiveSlot,
	}
	d.mu.Unlock()
	d.hookMu.Lock()
	hooks := d.onBirth
	d.hookMu.Unlock()
	for _, h := range hooks {
		h(&b)
	}
	return b
}

// jitter returns a random duration in [d/2, d].
func (d *Device) jitter(v time.Duration) time.Duration {
	if v <= 1 {
		return v
	}
	d.randMu.Lock()
	defer d.randMu.Unlock()
	return v/2 + time.Duration(d.rnd.Int64N(int64(v/2)+1))
}

// StateDir is the flash directory of device id under root.
func StateDir(root, id string) string { return filepath.Join(root, id) }
