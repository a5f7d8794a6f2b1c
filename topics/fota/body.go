package fota

import (
	"fmt"
	"slices"
)

// State is a device's FOTA state, reported in Status.State. The states
// refine LwM2M Object 5 (Firmware Update); PROTOCOL.md has the mapping.
type State string

// Device FOTA states.
const (
	StateIdle          State = "idle"           // no update in progress (initial)
	StateDownloading   State = "downloading"    // manifest accepted, fetching chunks
	StateVerifying     State = "verifying"      // all chunks held, checking hash, signature, descriptor
	StateVerified      State = "verified"       // image in the inactive slot is good
	StateRebooting     State = "rebooting"      // controlled reboot into the new slot
	StatePendingVerify State = "pending_verify" // running the new image, self-test not yet passed
	StateSucceeded     State = "succeeded"      // self-test passed, new image marked valid
	StateFailed        State = "failed"         // update abandoned, running image unchanged
	StateRolledBack    State = "rolled_back"    // back on the previous slot (boot failures or manual)
)

// States lists every state in lifecycle order.
var States = []State{StateIdle, StateDownloading, StateVerifying, StateVerified, StateRebooting,
	StatePendingVerify, StateSucceeded, StateFailed, StateRolledBack}

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool { return slices.Contains(States, s) }

// Stable reports whether s is a resting state, in which a new manifest or
// a manual rollback may start something.
func (s State) Stable() bool {
	switch s {
	case StateIdle, StateSucceeded, StateFailed, StateRolledBack:
		return true
	}
	return false
}

// resting lists where a resting state may go: a new manifest (downloading),
// a refused manifest (failed), a manual rollback (rolled_back), or idle.
var resting = []State{StateIdle, StateDownloading, StateFailed, StateRolledBack}

// transitions lists the allowed successors of each state (besides itself,
// which is always allowed: progress reports repeat the state).
var transitions = map[State][]State{
	StateIdle:          {StateDownloading, StateFailed, StateRolledBack},
	StateDownloading:   {StateVerifying, StateFailed},
	StateVerifying:     {StateVerified, StateFailed, StateDownloading},
	StateVerified:      {StateRebooting, StateFailed},
	StateRebooting:     {StatePendingVerify, StateFailed, StateRolledBack},
	StatePendingVerify: {StateSucceeded, StateRolledBack, StateRebooting},
	StateSucceeded:     resting,
	StateFailed:        resting,
	StateRolledBack:    resting,
}

// CanTransition reports whether a device may go from one state to another.
// Repeating a state is always allowed. A stable state may also move to
// downloading for a new manifest (a newer manifest during a download
// restarts downloading, which is the same state).
func CanTransition(from, to State) bool {
	if !from.Valid() || !to.Valid() {
		return false
	}
	return from == to || slices.Contains(transitions[from], to)
}

// ManifestBody is the body on down/fota_manifest.
type ManifestBody struct {
	FotaManifest *Manifest `json:"fota_manifest"`
}

// ParseManifestBody reads {"fota_manifest":{...}} strictly (see
// ParseManifest). It does not check the signature.
func ParseManifestBody(b []byte) (Manifest, error) {
	var body ManifestBody
	if err := decodeStrict(b, &body); err != nil {
		return Manifest{}, fmt.Errorf("parse fota_manifest: %w", err)
	}
	if body.FotaManifest == nil {
		return Manifest{}, fmt.Errorf("parse fota_manifest: %w: no fota_manifest object", ErrMalformed)
	}
	if err := body.FotaManifest.checkWire(); err != nil {
		return Manifest{}, fmt.Errorf("parse fota_manifest: %w", err)
	}
	return *body.FotaManifest, nil
}

// RequestBody is the body on up/fota_request.
type RequestBody struct {
	FotaRequest *Request `json:"fota_request"`
}

// Request asks the backend for chunks of one firmware version: at most
// MaxWindow distinct indices, each sent once by the backend in reply.
type Request struct {
	Version string `json:"version"`
	Chunks  []int  `json:"chunks"`
}

// Validate checks the version and 1..MaxWindow distinct indices in
// 0..MaxChunks-1. The backend also checks indices against its manifest.
func (r Request) Validate() error {
	if err := ValidVersion(r.Version); err != nil {
		return err
	}
	if len(r.Chunks) == 0 || len(r.Chunks) > MaxWindow {
		return fmt.Errorf("%w: %d chunk indices, want 1..%d", ErrMalformed, len(r.Chunks), MaxWindow)
	}
	for i, c := range r.Chunks {
		if c < 0 || c >= MaxChunks {
			return fmt.Errorf("%w: chunk index %d outside 0..%d", ErrMalformed, c, MaxChunks-1)
		}
		if slices.Contains(r.Chunks[:i], c) {
			return fmt.Errorf("%w: chunk index %d repeated", ErrMalformed, c)
		}
	}
	return nil
}

// ParseRequest reads {"fota_request":{...}} strictly and validates it.
func ParseRequest(b []byte) (Request, error) {
	var body RequestBody
	if err := decodeStrict(b, &body); err != nil {
		return Request{}, fmt.Errorf("parse fota_request: %w", err)
	}
	if body.FotaRequest == nil {
		return Request{}, fmt.Errorf("parse fota_request: %w: no fota_request object", ErrMalformed)
	}
	if err := body.FotaRequest.Validate(); err != nil {
		return Request{}, fmt.Errorf("parse fota_request: %w", err)
	}
	return *body.FotaRequest, nil
}

// StatusBody is the body on up/fota_status.
type StatusBody struct {
	FotaStatus *Status `json:"fota_status"`
}

// Status reports a device's FOTA state and progress.
type Status struct {
	Version       string `json:"version"`                   // target version; "" only when idle
	State         State  `json:"state"`                     // one of States
	ChunkReceived int    `json:"chunk_received"`            // chunks held
	TotalChunks   int    `json:"total_chunks"`              // chunks in the manifest (0 when idle)
	Reason        string `json:"reason,omitempty"`          // a Reason* code, for failed and rolled_back
	Detail        string `json:"detail,omitempty"`          // human-readable detail of Reason
	Running       string `json:"running_version,omitempty"` // version currently running
	BootCount     int    `json:"boot_count,omitempty"`      // boots of a pending_verify image so far
}

// Validate checks the state, counts and version.
func (s Status) Validate() error {
	if !s.State.Valid() {
		return fmt.Errorf("%w: unknown state %q", ErrMalformed, s.State)
	}
	if s.Version != "" || s.State != StateIdle {
		if err := checkVersionString(s.Version); err != nil {
			return err
		}
	}
	if s.Running != "" {
		if err := checkVersionString(s.Running); err != nil {
			return err
		}
	}
	if s.TotalChunks < 0 || s.TotalChunks > MaxChunks || s.ChunkReceived < 0 || s.ChunkReceived > s.TotalChunks {
		return fmt.Errorf("%w: chunk_received %d of total_chunks %d", ErrMalformed, s.ChunkReceived, s.TotalChunks)
	}
	if s.BootCount < 0 {
		return fmt.Errorf("%w: boot_count %d", ErrMalformed, s.BootCount)
	}
	if len(s.Reason) > 64 || len(s.Detail) > 512 {
		return fmt.Errorf("%w: reason or detail too long", ErrMalformed)
	}
	return nil
}

// ParseStatus reads {"fota_status":{...}} strictly and validates it.
func ParseStatus(b []byte) (Status, error) {
	var body StatusBody
	if err := decodeStrict(b, &body); err != nil {
		return Status{}, fmt.Errorf("parse fota_status: %w", err)
	}
	if body.FotaStatus == nil {
		return Status{}, fmt.Errorf("parse fota_status: %w: no fota_status object", ErrMalformed)
	}
	if err := body.FotaStatus.Validate(); err != nil {
		return Status{}, fmt.Errorf("parse fota_status: %w", err)
	}
	return *body.FotaStatus, nil
}

// RollbackBody is the body on down/rollback.
type RollbackBody struct {
	Rollback *Rollback `json:"rollback"`
}

// Rollback asks a device to boot its previous valid slot without a
// download. When Version is set, the device refuses unless the previous
// slot holds exactly that version.
type Rollback struct {
	Reason  string `json:"reason"`
	Version string `json:"version,omitempty"`
}

// ParseRollback reads {"rollback":{...}} strictly.
func ParseRollback(b []byte) (Rollback, error) {
	var body RollbackBody
	if err := decodeStrict(b, &body); err != nil {
		return Rollback{}, fmt.Errorf("parse rollback: %w", err)
	}
	if body.Rollback == nil {
		return Rollback{}, fmt.Errorf("parse rollback: %w: no rollback object", ErrMalformed)
	}
	r := *body.Rollback
	if len(r.Reason) > 512 {
		return Rollback{}, fmt.Errorf("parse rollback: %w: reason longer than 512 bytes", ErrMalformed)
	}
	if r.Version != "" {
		if err := checkVersionString(r.Version); err != nil {
			return Rollback{}, fmt.Errorf("parse rollback: %w", err)
		}
	}
	return r, nil
}
