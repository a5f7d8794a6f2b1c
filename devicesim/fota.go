package devicesim

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// FOTA flash records. The state record is small and rewritten on every
// state change; the manifest is written once per download; the bitmap is a
// raw blob rewritten after every chunk, bound to the manifest's hash so a
// bitmap can never be read against another manifest.
const (
	RecordFOTA         = "fota"          // fotaRecord
	RecordFOTAManifest = "fota_manifest" // fotaManifestRecord
	FileFOTABitmap     = "fota_bitmap"   // hash[32] || fota.Bitmap.MarshalBinary()
)

// SlotFile is the raw flash file of a firmware slot ("slot_a", "slot_b").
func SlotFile(slot string) string { return "slot_" + slot }

// FOTA defaults.
const (
	DefaultSlotSize         = 4 << 20
	DefaultChunkTimeout     = 5 * time.Second
	DefaultMaxChunkTimeout  = 60 * time.Second
	DefaultSelfTestDeadline = 60 * time.Second
	DefaultFailBootDelay    = 2 * time.Second
)

// FOTAOptions configures AttachFOTA.
type FOTAOptions struct {
	// PublicKey is the firmware-signing public key (fota.LoadPublicKey).
	// The device holds nothing that could sign firmware. Without a key
	// every manifest is refused (bad_signature); rollback still works.
	PublicKey ed25519.PublicKey
	// SlotSize is the capacity of each firmware slot; default
	// DefaultSlotSize (4 MiB), at most fota.MaxImageSize.
	SlotSize int64
	// Window is the most chunks in flight, 1..fota.MaxWindow; default
	// fota.DefaultWindow.
	Window int
	// ChunkTimeout is how long a requested chunk may take before it is
	// requested again; it doubles per retry of that chunk up to
	// MaxChunkTimeout.
	ChunkTimeout, MaxChunkTimeout time.Duration
	// SelfTestDeadline bounds how long a pending-verify image may take to
	// connect and report before the device reboots (a failed boot).
	SelfTestDeadline time.Duration
	// FailBootDelay is how long a fail-boot test image runs before it
	// "crashes" (reboots without reporting).
	FailBootDelay time.Duration
	// Project, when set, is the only app descriptor project name accepted;
	// otherwise any non-empty name is.
	Project string
}

func (o *FOTAOptions) setDefaults() error {
	if o.SlotSize <= 0 {
		o.SlotSize = DefaultSlotSize
	}
	if o.SlotSize > fota.MaxImageSize {
		return fmt.Errorf("slot size %d above %d", o.SlotSize, fota.MaxImageSize)
	}
	if o.Window <= 0 {
		o.Window = fota.DefaultWindow
	}
	if o.Window > fota.MaxWindow {
		return fmt.Errorf("window %d above %d", o.Window, fota.MaxWindow)
	}
	if o.PublicKey != nil && len(o.PublicKey) != ed25519.PublicKeySize {
		return fmt.Errorf("public key is %d bytes, want %d", len(o.PublicKey), ed25519.PublicKeySize)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ChunkTimeout, DefaultChunkTimeout)
	def(&o.MaxChunkTimeout, DefaultMaxChunkTimeout)
	def(&o.SelfTestDeadline, DefaultSelfTestDeadline)
	def(&o.FailBootDelay, DefaultFailBootDelay)
	return nil
}

// fotaRecord is the FOTA state on flash.
type fotaRecord struct {
	State   fota.State `json:"state"`
	Version string     `json:"version,omitempty"` // target version
	Hash    string     `json:"hash,omitempty"`    // manifest hash of the download
	Slot    string     `json:"slot,omitempty"`    // slot being written
	Total   int        `json:"total,omitempty"`   // chunks in the manifest
	Reason  string     `json:"reason,omitempty"`
	Detail  string     `json:"detail,omitempty"`
}

// fotaManifestRecord is the verified manifest of the current download.
type fotaManifestRecord struct {
	Slot     string        `json:"slot"`
	Manifest fota.Manifest `json:"manifest"`
}

// FOTAStats is a snapshot of the FOTA manager: its state and progress, and
// counters since it was attached.
type FOTAStats struct {
	State        fota.State
	Version      string // target version of the current or last update
	Running      string // firmware version running
	Slot         string // active slot
	Reason       string // reason of the last failure or rollback
	ChunksHeld   int
	TotalChunks  int
	InFlight     int
	BootAttempts int // boots of the pending-verify image

	Downloads     int64 // manifests accepted (downloads started)
	Resumes       int64 // downloads resumed: same manifest again, reconnect, boot
	Refused       int64 // manifests and rollbacks refused
	Requests      int64 // fota_request messages sent
	Requested     int64 // chunk indices requested, re-requests included
	Written       int64 // chunks checked and written
	Refetched     int64 // chunks received again although already held
	BadChunks     int64 // chunks refused: malformed, foreign, corrupt
	Ignored       int64 // chunks with no download in progress
	Timeouts      int64 // requested chunks that timed out (requested again)
	WriteErrors   int64 // slot or bitmap writes that failed
	Verifications int64 // whole-image verifications run
	StatusSent    int64
	StatusErrors  int64
}

// inflight is one requested chunk.
type inflight struct {
	deadline time.Time
}

// FOTAManager is the device side of firmware over the air
// (docs/PROTOCOL.md section 12): it checks signed manifests, pulls the
// image chunk by chunk in a bounded window into the inactive A/B slot,
// persisting a chunk bitmap so that disconnects and power cuts resume,
// verifies the image, reboots into it on trial, and keeps it only if its
// self-test passes. Its OnBoot hook is the bootloader: it counts the boots
// of a pending-verify slot and returns to the previous slot after
// fota.MaxBootAttempts failures. down/rollback returns to the previous
// valid slot without a download.
//
// Handlers (manifest, chunk, rollback) run on the device's downlink
// goroutine and only change state, persist it, and wake the manager's
// task; the task (one per boot) sends every request and status, times
// chunks out, verifies and reboots.
type FOTAManager struct {
	d    *Device
	opt  FOTAOptions
	kick chan struct{} // wakes the task; buffered 1

	mu       sync.Mutex // guards the fields below
	rec      fotaRecord
	man      *fota.Manifest // verified manifest of rec.Hash, or nil
	bits     *fota.Bitmap   // chunks held, for man
	inflight map[int]inflight
	tries    map[int]int    // requests per chunk index, for the timeout backoff
	reported int            // chunks held at the last progress status
	outbox   []fota.Status  // statuses for the task to send, in order
	event    *BootEvent     // boot event not yet reported
	boot     bootFacts      // facts of the current boot
	selfTest selfTestStatus // pending-verify progress of this boot
	dead     bool           // a simulated power cut hit: do nothing until the next boot

	downloads, resumes, refused, requests, requested, written, refetched atomic.Int64
	badChunks, ignored, timeouts, writeErrors, verifications             atomic.Int64
	statusSent, statusErrors                                             atomic.Int64
}

// bootFacts are read from the boot record at boot.
type bootFacts struct {
	running  string
	slot     string
	pending  bool
	attempts int
}

type selfTestStatus int

const (
	selfTestNone    selfTestStatus = iota // not a pending-verify boot
	selfTestRunning                       // waiting to connect and report
	selfTestPassed                        // marked valid
)

// AttachFOTA registers the FOTA manager on d: the bootloader hook, the
// fota_manifest, fota_chunk and rollback handlers, a resume on every
// connect, and the manager's task. Call it before d.Run.
func AttachFOTA(d *Device, opt FOTAOptions) (*FOTAManager, error) {
	if err := opt.setDefaults(); err != nil {
		return nil, fmt.Errorf("attach fota %s: %w", d.id, err)
	}
	m := &FOTAManager{d: d, opt: opt, kick: make(chan struct{}, 1)}
	d.OnBoot(m.onBoot)
	d.OnConnect(m.onConnect)
	d.Handle(topics.KindFOTAManifest, m.handleManifest)
	d.Handle(topics.KindFOTAChunk, m.handleChunk)
	d.Handle(topics.KindRollback, m.handleRollback)
	d.Go("fota", m.run)
	return m, nil
}

// Stats returns a snapshot of the state and counters.
func (m *FOTAManager) Stats() FOTAStats {
	m.mu.Lock()
	s := FOTAStats{
		State: m.rec.State, Version: m.rec.Version, Reason: m.rec.Reason,
		Running: m.boot.running, Slot: m.boot.slot, BootAttempts: m.boot.attempts,
		TotalChunks: m.rec.Total, InFlight: len(m.inflight),
	}
	if m.bits != nil {
		s.ChunksHeld = m.bits.Count()
	}
	m.mu.Unlock()
	s.Downloads, s.Resumes, s.Refused = m.downloads.Load(), m.resumes.Load(), m.refused.Load()
	s.Requests, s.Requested, s.Written = m.requests.Load(), m.requested.Load(), m.written.Load()
	s.Refetched, s.BadChunks, s.Ignored = m.refetched.Load(), m.badChunks.Load(), m.ignored.Load()
	s.Timeouts, s.WriteErrors, s.Verifications = m.timeouts.Load(), m.writeErrors.Load(), m.verifications.Load()
	s.StatusSent, s.StatusErrors = m.statusSent.Load(), m.statusErrors.Load()
	return s
}

// wake asks the task to look at the state again.
func (m *FOTAManager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// bootload is the bootloader's decision at power-on, a pure function of
// the boot record: count the boots of a pending-verify slot, and after
// fota.MaxBootAttempts of them mark it invalid and return to the previous
// valid slot, noting a rolled_back event to report.
func bootload(b *BootRecord) {
	if b.Slots == nil {
		b.Slots = map[string]SlotInfo{}
	}
	if _, ok := b.Slots[b.ActiveSlot]; !ok {
		b.Slots[b.ActiveSlot] = SlotInfo{Version: b.FirmwareVersion, State: SlotValid}
	}
	if !b.PendingVerify {
		b.BootAttempts = 0
		return
	}
	if b.BootAttempts < fota.MaxBootAttempts {
		b.BootAttempts++
		return
	}
	prev, ok := b.Slots[b.PreviousSlot]
	if b.PreviousSlot == "" || !ok || prev.State != SlotValid {
		// Nothing to return to: keep trying the pending image.
		b.BootAttempts++
		return
	}
	failed := b.FirmwareVersion
	b.Slots[b.ActiveSlot] = SlotInfo{Version: failed, State: SlotInvalid}
	b.ActiveSlot, b.FirmwareVersion = b.PreviousSlot, prev.Version
	b.PreviousSlot, b.PendingVerify, b.BootAttempts = "", false, 0
	b.Event = &BootEvent{State: string(fota.StateRolledBack), Reason: fota.ReasonBootFailed, From: failed,
		Detail: fmt.Sprintf("%s failed its self-test %d times", failed, fota.MaxBootAttempts)}
}

// onBoot is the bootloader hook, then reloads the FOTA state of the boot.
func (m *FOTAManager) onBoot(b *BootRecord) error {
	bootload(b)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.boot = bootFacts{running: b.FirmwareVersion, slot: b.ActiveSlot, pending: b.PendingVerify, attempts: b.BootAttempts}
	m.event = nil
	if b.Event != nil {
		e := *b.Event
		m.event = &e
	}
	m.inflight, m.tries, m.outbox = map[int]inflight{}, map[int]int{}, nil
	m.selfTest, m.dead = selfTestNone, false
	m.load(b)
	return nil
}

// load reads the FOTA records and reconciles them with the boot record.
// A record that cannot be read is logged and treated as absent, so the
// device always boots; the backend then sends the manifest again.
func (m *FOTAManager) load(b *BootRecord) {
	log := m.d.log
	m.man, m.bits = nil, nil
	var rec fotaRecord
	if err := loadRecord(m.d.fl, RecordFOTA, &rec); err != nil {
		log.Error().Err(err).Msg("fota record unreadable")
	}
	if !rec.State.Valid() {
		rec = fotaRecord{State: fota.StateIdle}
	}
	m.rec = rec
	switch {
	case m.event != nil:
		m.rec = fotaRecord{State: fota.StateRolledBack, Version: m.event.From,
			Reason: m.event.Reason, Detail: m.event.Detail}
		return
	case b.PendingVerify:
		m.rec = fotaRecord{State: fota.StatePendingVerify, Version: b.FirmwareVersion, Slot: b.ActiveSlot,
			Hash: rec.Hash, Total: rec.Total}
		m.selfTest = selfTestRunning
		return
	}
	switch rec.State {
	case fota.StateDownloading, fota.StateVerifying, fota.StateVerified, fota.StateRebooting, fota.StatePendingVerify:
	default:
		return // resting
	}
	if b.ActiveSlot == rec.Slot && b.FirmwareVersion == rec.Version {
		// The new image was committed and has been marked valid; only the
		// state record missed it (power cut in between).
		m.rec = fotaRecord{State: fota.StateSucceeded, Version: rec.Version, Slot: rec.Slot, Hash: rec.Hash, Total: rec.Total}
		m.persistLocked()
		return
	}
	if err := m.loadDownload(rec); err != nil {
		log.Error().Err(err).Str("version", rec.Version).Msg("fota download state lost")
		m.rec = fotaRecord{State: fota.StateFailed, Version: rec.Version, Reason: fota.ReasonStorage, Detail: err.Error()}
		m.persistLocked()
		return
	}
	if rec.State != fota.StateDownloading {
		// Interrupted during verification or before the reboot: verify
		// again from the start.
		m.rec.State = fota.StateVerifying
	}
	m.resumes.Add(1)
	log.Info().Str("version", rec.Version).Str("state", string(m.rec.State)).Int("held", m.bits.Count()).
		Int("total", m.bits.Len()).Msg("fota download resumed after boot")
}

// loadDownload reloads the manifest and bitmap of the download in rec.
func (m *FOTAManager) loadDownload(rec fotaRecord) error {
	var mr fotaManifestRecord
	if err := m.d.fl.Load(RecordFOTAManifest, &mr); err != nil {
		return fmt.Errorf("load manifest: %w", err)
	}
	if mr.Manifest.Hash != rec.Hash || mr.Slot != rec.Slot {
		return fmt.Errorf("load manifest: it is for %s, the state record for %s", mr.Manifest.Version, rec.Version)
	}
	if err := mr.Manifest.Verify(m.opt.PublicKey); err != nil {
		return fmt.Errorf("load manifest: %w", err)
	}
	bits, err := m.loadBitmap(mr.Manifest)
	if err != nil {
		return err
	}
	m.man, m.bits = &mr.Manifest, bits
	return nil
}

// loadBitmap reads the bitmap of man; a missing bitmap, or one bound to
// another manifest, is an empty one.
func (m *FOTAManager) loadBitmap(man fota.Manifest) (*fota.Bitmap, error) {
	bits, err := fota.NewBitmap(len(man.Chunks))
	if err != nil {
		return nil, fmt.Errorf("load bitmap: %w", err)
	}
	raw, err := m.d.fl.ReadFile(FileFOTABitmap)
	if errors.Is(err, flash.ErrNotFound) {
		return bits, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load bitmap: %w", err)
	}
	h, _ := hex.DecodeString(man.Hash)
	if len(raw) < len(h) || string(raw[:len(h)]) != string(h) {
		return bits, nil
	}
	var got fota.Bitmap
	if err := got.UnmarshalBinary(raw[len(h):]); err != nil || got.Len() != len(man.Chunks) {
		m.d.log.Warn().Err(err).Msg("fota bitmap unreadable: downloading every chunk again")
		return bits, nil
	}
	return &got, nil
}

// saveBitmap persists the bitmap, bound to the manifest hash. m.mu held.
func (m *FOTAManager) saveBitmapLocked() error {
	h, _ := hex.DecodeString(m.man.Hash)
	b, _ := m.bits.MarshalBinary()
	return m.d.fl.WriteFile(FileFOTABitmap, append(h, b...))
}

// persistLocked saves the state record, logging a failure (the state in
// memory still moves on; at the next boot the older record is reconciled).
func (m *FOTAManager) persistLocked() bool {
	if err := m.d.fl.Save(RecordFOTA, m.rec); err != nil {
		m.writeErrorLocked(err)
		return false
	}
	return true
}

// writeErrorLocked counts a failed flash write; after a simulated power
// cut the manager stops acting until the next boot, as dead firmware
// would. m.mu held.
func (m *FOTAManager) writeErrorLocked(err error) {
	m.writeErrors.Add(1)
	if errors.Is(err, flash.ErrPowerCut) {
		m.dead = true
	}
	m.d.log.Error().Err(err).Str("state", string(m.rec.State)).Msg("fota flash write failed")
}

// statusLocked returns the current status. m.mu held.
func (m *FOTAManager) statusLocked() fota.Status {
	s := fota.Status{Version: m.rec.Version, State: m.rec.State, TotalChunks: m.rec.Total,
		Reason: m.rec.Reason, Detail: m.rec.Detail, Running: m.boot.running}
	switch {
	case m.bits != nil:
		s.ChunkReceived, s.TotalChunks = m.bits.Count(), m.bits.Len()
	case s.State != fota.StateFailed && s.State != fota.StateRolledBack:
		s.ChunkReceived = s.TotalChunks // past the download
	}
	if s.State == fota.StatePendingVerify {
		s.BootCount = m.boot.attempts
	}
	if s.State == fota.StateIdle {
		s.Version, s.ChunkReceived, s.TotalChunks = "", 0, 0
	} else if s.Version == "" {
		s.Version = m.boot.running
	}
	if s.ChunkReceived > s.TotalChunks {
		s.ChunkReceived = s.TotalChunks
	}
	return s
}

// queueLocked queues a status for the task. m.mu held.
func (m *FOTAManager) queueLocked(s fota.Status) {
	if len(s.Detail) > 512 {
		s.Detail = s.Detail[:512]
	}
	m.outbox = append(m.outbox, s)
}

// setStateLocked moves to a new state, persists it and queues its status.
func (m *FOTAManager) setStateLocked(st fota.State, reason, detail string) {
	if !fota.CanTransition(m.rec.State, st) {
		m.d.log.Warn().Str("from", string(m.rec.State)).Str("to", string(st)).Msg("fota: unexpected transition")
	}
	m.rec.State, m.rec.Reason, m.rec.Detail = st, reason, detail
	m.persistLocked()
	m.queueLocked(m.statusLocked())
}

// onConnect resumes after a (re)connect: chunks in flight went with the
// old connection, and the backend learns the current state.
func (m *FOTAManager) onConnect(context.Context) {
	m.mu.Lock()
	if m.rec.State == fota.StateDownloading {
		clear(m.inflight)
		m.resumes.Add(1)
	}
	if m.rec.State != fota.StateIdle && m.rec.State != fota.StatePendingVerify && m.event == nil {
		m.queueLocked(m.statusLocked())
	}
	m.mu.Unlock()
	m.wake()
}
