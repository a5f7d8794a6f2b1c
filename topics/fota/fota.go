// Package fota holds the firmware-over-the-air pieces that the EcoWatt
// backend and the device (devicesim, or ESP32 firmware) share: the ESP32 app
// image format and its descriptor, the signed manifest and its canonical
// signing bytes, the firmware-signing key files, the binary chunk format
// carried in a binary envelope on down/fota_chunk, the JSON bodies of the
// FOTA topics, the device state machine, and a persistable chunk bitmap.
//
// The package is pure: it imports only the standard library, so a firmware
// author can port it line by line. docs/PROTOCOL.md (section "FOTA") is the
// byte-exact specification, and testdata/vectors.json pins its bytes.
package fota

import "errors"

// Errors that callers branch on. Every error returned by this package wraps
// at most one of them (use errors.Is); the message says what was wrong.
var (
	// ErrMalformed: a manifest, chunk or body does not follow the format.
	ErrMalformed = errors.New("fota: malformed")
	// ErrTooLarge: an image, manifest or message exceeds a limit.
	ErrTooLarge = errors.New("fota: too large")
	// ErrSignature: the manifest signature does not verify under the key
	// (a tampered manifest or a manifest signed by another key).
	ErrSignature = errors.New("fota: bad signature")
	// ErrBadImage: the image is not a valid ESP32 app image or has no
	// valid app descriptor.
	ErrBadImage = errors.New("fota: bad image")
	// ErrVersionMismatch: the image descriptor names another version than
	// the one it is uploaded or announced as.
	ErrVersionMismatch = errors.New("fota: version mismatch")
	// ErrDowngrade: the offered version is not newer than the running one.
	ErrDowngrade = errors.New("fota: downgrade refused")
	// ErrChunk: a chunk does not match the manifest (other firmware,
	// index out of range, wrong length or hash). The device drops it and
	// fetches it again.
	ErrChunk = errors.New("fota: bad chunk")
	// ErrImageHash: the assembled image does not match the manifest's size
	// or SHA-256. The device must discard what it holds and start over.
	ErrImageHash = errors.New("fota: image hash mismatch")
)

// Limits of the format.
const (
	// MinChunkSize and MaxChunkSize bound Manifest.ChunkSize (1–32 KiB).
	MinChunkSize = 1 << 10
	MaxChunkSize = 32 << 10
	// DefaultChunkSize is what the backend uses unless told otherwise.
	DefaultChunkSize = 16 << 10
	// MaxImageSize bounds an image (the largest ESP32 app partition).
	MaxImageSize = 16 << 20
	// MaxChunks bounds the number of chunks, so that a manifest always fits
	// in one JSON envelope (262 144 bytes) with room to spare.
	MaxChunks = 3072
	// MaxVersionLen is the longest version string: esp_app_desc_t.version
	// is char[32] including its terminating NUL.
	MaxVersionLen = 31
	// MaxWindow is the most chunk indices one fota_request may name, and so
	// the most chunks a device may have in flight.
	MaxWindow = 8
	// DefaultWindow is the window devicesim uses.
	DefaultWindow = 8
	// MaxBodySize bounds any FOTA JSON body (manifest included).
	MaxBodySize = 256 << 10
)

// Reason codes for Status.Reason. ReasonOf maps this package's errors to
// them; the others describe what the device itself observed.
const (
	ReasonMalformed       = "malformed"
	ReasonTooLarge        = "too_large"
	ReasonBadSignature    = "bad_signature"
	ReasonBadImage        = "bad_image"
	ReasonVersionMismatch = "version_mismatch"
	ReasonDowngrade       = "downgrade"
	ReasonBadChunk        = "bad_chunk"
	ReasonHashMismatch    = "hash_mismatch"
	ReasonBootFailed      = "boot_failed"      // self-test failed MaxBootAttempts times
	ReasonManual          = "manual_rollback"  // operator asked (down/rollback)
	ReasonNoPrevious      = "no_previous_slot" // rollback asked, no valid previous slot
	ReasonStorage         = "storage"          // flash write/read failed
	ReasonOther           = "error"            // anything else
)

// MaxBootAttempts is how many times the bootloader tries a pending-verify
// image before it returns to the previous slot.
const MaxBootAttempts = 3

// ReasonOf returns the reason code for an error from this package, or
// ReasonOther.
func ReasonOf(err error) string {
	for _, r := range []struct {
		err    error
		reason string
	}{
		{ErrSignature, ReasonBadSignature},
		{ErrDowngrade, ReasonDowngrade},
		{ErrVersionMismatch, ReasonVersionMismatch},
		{ErrImageHash, ReasonHashMismatch},
		{ErrChunk, ReasonBadChunk},
		{ErrBadImage, ReasonBadImage},
		{ErrTooLarge, ReasonTooLarge},
		{ErrMalformed, ReasonMalformed},
	} {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ReasonOther
}
