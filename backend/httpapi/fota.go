package httpapi

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/fota"
	"github.com/ecowatt/ecowatt/backend/jobs"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/rs/zerolog"
)

// FOTA is what the API needs from the firmware service; *fota.Service
// has it.
type FOTA interface {
	PublicKey() ed25519.PublicKey
	Upload(ctx context.Context, u fota.Upload) (fota.Firmware, error)
	Firmware(ctx context.Context, version string) (fota.Firmware, error)
	FirmwareList(ctx context.Context) ([]fota.Firmware, error)
	StartUpdate(ctx context.Context, dev, version, rollout string) (backend.DeviceFOTA, error)
	DeviceStatus(ctx context.Context, dev string) (backend.DeviceFOTA, error)
	Rollback(ctx context.Context, dev, reason, version string) error
}

var _ FOTA = (*fota.Service)(nil)

// Rollouts serves /api/v1/rollouts: the documented alias that shows
// firmware jobs as rollouts (*jobs.Rollouts has it).
type Rollouts interface {
	CreateRollout(ctx context.Context, spec fota.RolloutSpec, by string) (fota.Rollout, error)
	Rollout(ctx context.Context, rid string) (fota.Rollout, error)
	Rollouts(ctx context.Context) ([]fota.Rollout, error)
	PauseRollout(ctx context.Context, rid string) (fota.Rollout, error)
	ResumeRollout(ctx context.Context, rid string) (fota.Rollout, error)
	AbortRollout(ctx context.Context, rid string) (fota.Rollout, error)
}

var _ Rollouts = (*jobs.Rollouts)(nil)

// rolloutsOff answers the rollout routes without a job engine.
var rolloutsOff = backend.Errorf(backend.CodeUnavailable, "", "rollouts (firmware jobs) are not enabled on this server")

func rolloutsHandler(log zerolog.Logger, ro Rollouts, st int, fn func(w http.ResponseWriter, r *http.Request) (any, error)) http.Handler {
	return serviceHandler(log, ro == nil, rolloutsOff, st, fn)
}

// fotaOff answers when the server runs without a FOTA service.
var fotaOff = backend.Errorf(backend.CodeUnavailable, "", "firmware updates are not enabled on this server")

// MaxUploadSize bounds a firmware upload request: the largest image plus
// room for the manifest and the form.
const MaxUploadSize = wire.MaxImageSize + wire.MaxBodySize + 64<<10

// fotaHandler is serviceHandler for the FOTA routes.
func fotaHandler(log zerolog.Logger, f FOTA, st int, fn func(w http.ResponseWriter, r *http.Request) (any, error)) http.Handler {
	return serviceHandler(log, f == nil, fotaOff, st, fn)
}

// keyDoc is the firmware-signing public key.
type keyDoc struct {
	Algorithm string `json:"algorithm"`
	PublicKey string `json:"public_key"` // hex, 32 bytes
	PEM       string `json:"pem"`        // as in fota.PublicKeyFile
}

func handleFirmwareKey(log zerolog.Logger, f FOTA) http.Handler {
	return fotaHandler(log, f, http.StatusOK, func(http.ResponseWriter, *http.Request) (any, error) {
		pub := f.PublicKey()
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, err
		}
		return keyDoc{Algorithm: "ed25519", PublicKey: hex.EncodeToString(pub),
			PEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}, nil
	})
}

// handleFirmwareUpload takes multipart/form-data with the parts version,
// file (the image) and optionally manifest (signed offline) and chunk_size.
func handleFirmwareUpload(log zerolog.Logger, f FOTA) http.Handler {
	return fotaHandler(log, f, http.StatusCreated, func(w http.ResponseWriter, r *http.Request) (any, error) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxUploadSize)
		u, err := readUpload(r)
		if err != nil {
			return nil, err
		}
		return f.Upload(r.Context(), u)
	})
}

func readUpload(r *http.Request) (fota.Upload, error) {
	var u fota.Upload
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "multipart/form-data" {
		return u, backend.Errorf(backend.CodeInvalid, "", "want multipart/form-data with parts version and file")
	}
	mr, err := r.MultipartReader()
	if err != nil {
		return u, backend.Errorf(backend.CodeInvalid, "", "bad multipart body: %v", err)
	}
	total := 0
	var haveFile bool
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return u, backend.Errorf(backend.CodeTooLarge, "", "upload over %d bytes", MaxUploadSize)
		}
		if err != nil {
			return u, backend.Errorf(backend.CodeInvalid, "", "bad multipart body: %v", err)
		}
		limit := 64
		switch p.FormName() {
		case "file":
			limit = wire.MaxImageSize
		case "manifest":
			limit = wire.MaxBodySize
		case "version", "chunk_size":
		default:
			return u, backend.Errorf(backend.CodeInvalid, p.FormName(), "unknown form field %q (want version, file, manifest, chunk_size)", p.FormName())
		}
		b, err := io.ReadAll(io.LimitReader(p, int64(limit)+1))
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return u, backend.Errorf(backend.CodeTooLarge, "", "upload over %d bytes", MaxUploadSize)
		}
		if err != nil {
			return u, backend.Errorf(backend.CodeInvalid, p.FormName(), "reading %s: %v", p.FormName(), err)
		}
		if len(b) > limit {
			return u, backend.Errorf(backend.CodeTooLarge, p.FormName(), "%s over %d bytes", p.FormName(), limit)
		}
		if total += len(b); total > MaxUploadSize {
			return u, backend.Errorf(backend.CodeTooLarge, "", "upload over %d bytes", MaxUploadSize)
		}
		switch p.FormName() {
		case "file":
			u.Image, haveFile = b, true
		case "manifest":
			u.Manifest = b
		case "version":
			u.Version = string(b)
		case "chunk_size":
			if u.ChunkSize, err = strconv.Atoi(string(b)); err != nil {
				return u, backend.Errorf(backend.CodeInvalid, "chunk_size", "chunk_size must be an integer number of bytes")
			}
		}
	}
	if u.Version == "" {
		return u, backend.Errorf(backend.CodeInvalid, "version", "the version field is required")
	}
	if !haveFile {
		return u, backend.Errorf(backend.CodeInvalid, "file", "the file field (the firmware image) is required")
	}
	return u, nil
}

func handleFirmwareList(log zerolog.Logger, f FOTA) http.Handler {
	return fotaHandler(log, f, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		l, err := f.FirmwareList(r.Context())
		return map[string]any{"firmware": l}, err
	})
}

func handleFirmwareGet(log zerolog.Logger, f FOTA) http.Handler {
	return fotaHandler(log, f, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		return f.Firmware(r.Context(), r.PathValue("version"))
	})
}

func handleDeviceFOTAGet(log zerolog.Logger, f FOTA) http.Handler {
	return fotaHandler(log, f, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		return f.DeviceStatus(r.Context(), r.PathValue("id"))
	})
}

// handleDeviceFOTAStart starts a single update: {"version":"1.0.4"}.
func handleDeviceFOTAStart(log zerolog.Logger, f FOTA) http.Handler {
	return fotaHandler(log, f, http.StatusAccepted, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req struct {
			Version string `json:"version"`
		}
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return f.StartUpdate(r.Context(), r.PathValue("id"), req.Version, "")
	})
}

// handleDeviceRollback asks a device to return to its previous slot:
// {"reason":"...","version":"1.0.3"}, both optional; an empty body is fine.
func handleDeviceRollback(log zerolog.Logger, f FOTA) http.Handler {
	return fotaHandler(log, f, http.StatusAccepted, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req struct {
			Reason  string `json:"reason"`
			Version string `json:"version"`
		}
		if err := decodeOptional(w, r, &req); err != nil {
			return nil, err
		}
		dev := r.PathValue("id")
		if err := f.Rollback(r.Context(), dev, req.Reason, req.Version); err != nil {
			return nil, err
		}
		return map[string]any{"device": dev, "status": "rollback_requested", "reason": req.Reason, "version": req.Version}, nil
	})
}

func handleRolloutCreate(log zerolog.Logger, ro Rollouts) http.Handler {
	return rolloutsHandler(log, ro, http.StatusCreated, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var spec fota.RolloutSpec
		if err := decode(w, r, &spec); err != nil {
			return nil, err
		}
		return ro.CreateRollout(r.Context(), spec, backend.OperatorFrom(r.Context()))
	})
}

func handleRolloutList(log zerolog.Logger, ro Rollouts) http.Handler {
	return rolloutsHandler(log, ro, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		l, err := ro.Rollouts(r.Context())
		return map[string]any{"rollouts": l}, err
	})
}

func handleRolloutGet(log zerolog.Logger, ro Rollouts) http.Handler {
	return rolloutsHandler(log, ro, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		return ro.Rollout(r.Context(), r.PathValue("rid"))
	})
}

// handleRolloutAction is pause, resume or abort.
func handleRolloutAction(log zerolog.Logger, ro Rollouts, action string) http.Handler {
	return rolloutsHandler(log, ro, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		rid := r.PathValue("rid")
		switch action {
		case "pause":
			return ro.PauseRollout(r.Context(), rid)
		case "resume":
			return ro.ResumeRollout(r.Context(), rid)
		}
		return ro.AbortRollout(r.Context(), rid)
	})
}
