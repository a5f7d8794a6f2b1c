package backend

import (
	"strconv"
	"time"
)

// DeviceFOTA is a device's firmware-update progress as the device document
// shows it. backend/fota writes it into the device hash (store.Keys.Device)
// under the FOTA* field names, so that GET /api/v1/devices/{id} and the
// device list carry it without another round trip.
type DeviceFOTA struct {
	// Target is the version the backend's current (or last) update
	// installs; Rollout names the rollout that started it, if any.
	Target  string `json:"target,omitempty"`
	Rollout string `json:"rollout,omitempty"`
	// Active is true while an update is in progress.
	Active bool `json:"active"`
	// Result is how the last update ended: succeeded, failed,
	// rolled_back or timed_out; empty while active.
	Result string `json:"result,omitempty"`
	// State is the last state the device reported (fota.State), or
	// "pending" before its first report of an update.
	State    string  `json:"state"`
	Version  string  `json:"version,omitempty"` // the version of that report
	Received int     `json:"chunk_received"`
	Total    int     `json:"total_chunks"`
	Percent  float64 `json:"percent"`
	Reason   string  `json:"reason,omitempty"` // a fota.Reason* code
	Detail   string  `json:"detail,omitempty"`

	StartedAt *time.Time `json:"started_at,omitempty"`
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
}

// Fields of the device hash that hold DeviceFOTA.
const (
	FOTATarget    = "fota_target"
	FOTARollout   = "fota_rollout"
	FOTAActive    = "fota_active" // "1" while active
	FOTAResult    = "fota_result"
	FOTAState     = "fota_state"
	FOTAVersion   = "fota_version"
	FOTAReceived  = "fota_received"
	FOTATotal     = "fota_total"
	FOTAReason    = "fota_reason"
	FOTADetail    = "fota_detail"
	FOTAStartedAt = "fota_started_at" // unix ms
	FOTAUpdatedAt = "fota_updated_at" // unix ms: the last status or start
	FOTASentAt    = "fota_sent_at"    // unix ms: the manifest was last sent
)

// ParseDeviceFOTA reads DeviceFOTA from a device hash; nil when the device
// has never had an update or reported a FOTA status.
func ParseDeviceFOTA(h map[string]string) *DeviceFOTA {
	if h[FOTATarget] == "" && h[FOTAState] == "" {
		return nil
	}
	f := &DeviceFOTA{
		Target:    h[FOTATarget],
		Rollout:   h[FOTARollout],
		Active:    h[FOTAActive] == "1",
		Result:    h[FOTAResult],
		State:     h[FOTAState],
		Version:   h[FOTAVersion],
		Reason:    h[FOTAReason],
		Detail:    h[FOTADetail],
		StartedAt: msTime(h[FOTAStartedAt]),
		UpdatedAt: msTime(h[FOTAUpdatedAt]),
	}
	f.Received, _ = strconv.Atoi(h[FOTAReceived])
	f.Total, _ = strconv.Atoi(h[FOTATotal])
	if f.Total > 0 {
		f.Percent = float64(int(1000*float64(f.Received)/float64(f.Total))) / 10
	}
	return f
}
