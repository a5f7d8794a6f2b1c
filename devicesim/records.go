package devicesim

import (
	"errors"
	"fmt"
	"maps"
	"sync"

	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// Flash records kept by the device runtime. Each is one JSON file
// (NAME.json) in the device's state directory. Later features add their own
// records beside these (config, recent command IDs, FOTA bitmap, slots).
const (
	RecordBoot     = "boot"      // BootRecord
	RecordNonce    = "nonce"     // nonceRecord: uplink nonce reservation
	RecordRxWindow = "rx_window" // rxWindowRecord: downlink anti-replay window
)

// Firmware slots.
const (
	SlotA = "a"
	SlotB = "b"
)

// BootRecord is the boot metadata the bootloader keeps on flash.
type BootRecord struct {
	BootCount       int64  `json:"boot_count"`
	ActiveSlot      string `json:"active_slot"`
	FirmwareVersion string `json:"firmware_version"`
	// PendingVerify is set when the active slot was just installed and has
	// not yet passed its self-test (FOTA).
	PendingVerify bool `json:"pending_verify,omitempty"`
	// BootAttempts counts the boots of the pending-verify slot; the
	// bootloader returns to PreviousSlot when it would exceed
	// fota.MaxBootAttempts.
	BootAttempts int `json:"boot_attempts,omitempty"`
	// PreviousSlot is the slot to roll back to: it holds a valid image that
	// no download has overwritten since. "" means there is none.
	PreviousSlot string `json:"previous_slot,omitempty"`
	// Slots describes what each firmware slot holds.
	Slots map[string]SlotInfo `json:"slots,omitempty"`
	// Event is what the bootloader (or a manual rollback) did to the boot
	// order, kept until the device has reported it once online.
	Event *BootEvent `json:"event,omitempty"`
}

// Slot states in SlotInfo.
const (
	SlotEmpty   = "empty"   // erased, or being written by a download
	SlotPending = "pending" // installed, on trial (pending-verify)
	SlotValid   = "valid"   // passed its self-test (or the factory image)
	SlotInvalid = "invalid" // failed its self-test or was rolled back from
)

// SlotInfo is the boot metadata of one firmware slot.
type SlotInfo struct {
	Version string `json:"version,omitempty"`
	State   string `json:"state"`
}

// BootEvent records a rollback for the FOTA manager to report.
type BootEvent struct {
	State  string `json:"state"`  // fota.StateRolledBack
	Reason string `json:"reason"` // fota.ReasonBootFailed or fota.ReasonManual
	Detail string `json:"detail,omitempty"`
	From   string `json:"from"` // the version rolled back from
}

// Clone returns a deep copy of b.
func (b BootRecord) Clone() BootRecord {
	b.Slots = maps.Clone(b.Slots)
	if b.Event != nil {
		e := *b.Event
		b.Event = &e
	}
	return b
}

// nonceRecord is the uplink nonce reservation: every nonce below Limit may
// have been used, so after a reboot the device starts at Limit.
type nonceRecord struct {
	Limit uint64 `json:"limit"`
}

// rxWindowRecord persists the downlink anti-replay window
// (envelope.RankWindow). A record written before the rank window (Rank
// false) holds an envelope.Window in High and Seen and is converted.
type rxWindowRecord struct {
	High   uint64   `json:"high,omitempty"`
	Seen   uint64   `json:"seen,omitempty"`
	Rank   bool     `json:"rank,omitempty"`
	Floor  uint64   `json:"floor,omitempty"`
	Nonces []uint64 `json:"nonces,omitempty"`
}

func (r rxWindowRecord) window() envelope.RankWindow {
	if !r.Rank {
		return envelope.RankWindowFrom(envelope.Window{High: r.High, Seen: r.Seen})
	}
	return envelope.RankWindow{Floor: r.Floor, Seen: r.Nonces}
}

func rxRecord(w envelope.RankWindow) rxWindowRecord {
	return rxWindowRecord{Rank: true, Floor: w.Floor, Nonces: w.Seen}
}

// loadRecord is flash.Load that treats a missing record as the zero value.
func loadRecord(fl *flash.Store, name string, v any) error {
	if err := fl.Load(name, v); err != nil && !errors.Is(err, flash.ErrNotFound) {
		return err
	}
	return nil
}

// nonces hands out strictly increasing uplink nonces. It reserves them in
// blocks and persists each reservation before it uses any nonce of it, so
// that a power cut can waste nonces but never reuse one.
type nonces struct {
	fl    *flash.Store
	block uint64

	mu    sync.Mutex // guards next and limit
	next  uint64     // next nonce to hand out
	limit uint64     // first nonce not covered by the persisted reservation
}

// newNonces loads the reservation; the first nonce handed out is the old
// limit, skipping whatever the previous boot had reserved but not used.
func newNonces(fl *flash.Store, block uint64) (*nonces, error) {
	var r nonceRecord
	if err := loadRecord(fl, RecordNonce, &r); err != nil {
		return nil, fmt.Errorf("load nonce reservation: %w", err)
	}
	start := max(r.Limit, 1)
	return &nonces{fl: fl, block: max(block, 1), next: start, limit: start}, nil
}

// take returns the next nonce, persisting a new reservation first when the
// current one is used up.
func (n *nonces) take() (uint64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.next > envelope.MaxNonce {
		return 0, errors.New("uplink nonces exhausted")
	}
	if n.next >= n.limit {
		limit := min(n.next+n.block, envelope.MaxNonce+1)
		if err := n.fl.Save(RecordNonce, nonceRecord{Limit: limit}); err != nil {
			return 0, fmt.Errorf("reserve nonces: %w", err)
		}
		n.limit = limit
	}
	v := n.next
	n.next++
	return v, nil
}

// peek returns the next nonce take would hand out (for tests and stats).
func (n *nonces) peek() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.next
}
