package devicesim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/acquisition"
	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// RecordConfig is the remote configuration record (configRecord).
const RecordConfig = "config"

// configRecord is what the config manager keeps on flash, in one record
// so that the running config, its version and the ack sent for it change
// together, atomically.
type configRecord struct {
	// Version is the last config version the device acknowledged (0: none,
	// factory config). Birth reports it as config_version.
	Version int64         `json:"version"`
	Config  topics.Config `json:"config"`
	// LastAck is the ack sent for Version, repeated verbatim when that
	// version is delivered again.
	LastAck *topics.ConfigAck `json:"last_ack,omitempty"`
}

// ConfigOptions configures AttachConfig.
type ConfigOptions struct {
	// Default is the factory config, used until a version is accepted;
	// zero means topics.DefaultConfig().
	Default topics.Config
	// Apply schedules a config for the next safe boundary without a reboot
	// (AttachFeatures wires the acquisition scheduler's Apply, which
	// switches after the current upload). nil means there is nothing to
	// apply to; the config still takes effect at the next boot.
	Apply func(topics.Config) error
}

// ConfigStats are a config manager's counters since it was attached.
type ConfigStats struct {
	Versions   int64 // new versions processed (acked and persisted)
	Changed    int64 // of those, versions that changed the config
	Duplicates int64 // versions delivered again: stored ack repeated
	Stale      int64 // versions older than the current one
	Malformed  int64 // bodies without a usable version (not acked)
	AckErrors  int64 // acks that could not be published
}

// ConfigManager is the device's remote configuration: it validates each
// down/config version field by field (topics.ValidateConfigMessage, the
// same rules as the backend), persists the result atomically to flash
// before it acknowledges, schedules the new config for the next upload
// boundary, and acknowledges on up/config_ack.
//
// Versions: a version already acknowledged gets the stored ack again and
// changes nothing; an older version gets an ack that rejects each of its
// fields as stale and changes nothing; a newer version is validated
// against the running config and becomes the current version even when
// some or all of its fields are rejected (the ack says which), so the
// backend's redelivery stops.
type ConfigManager struct {
	d   *Device
	opt ConfigOptions

	mu  sync.Mutex // guards rec; held while a version is processed
	rec configRecord

	versions, changed, duplicates, stale, malformed, ackErrors atomic.Int64
}

// AttachConfig registers the config manager on d: it loads the persisted
// config at every boot, reports its version in the birth, and handles
// topics.KindConfig downlinks. Call it before d.Run.
func AttachConfig(d *Device, opt ConfigOptions) (*ConfigManager, error) {
	if opt.Default.SamplingInterval == 0 && opt.Default.UploadInterval == 0 && opt.Default.Registers == nil {
		opt.Default = topics.DefaultConfig()
	}
	if err := opt.Default.Validate(); err != nil {
		return nil, fmt.Errorf("attach config %s: default: %w", d.id, err)
	}
	opt.Default = opt.Default.Clone()
	m := &ConfigManager{d: d, opt: opt}
	m.load()
	d.OnBoot(func(*BootRecord) error {
		m.load()
		return nil
	})
	d.OnBirth(func(b *topics.Birth) {
		v, cfg := m.Current()
		b.ConfigVersion, b.Config = v, &cfg
	})
	d.Handle(topics.KindConfig, m.handle)
	return m, nil
}

// load reads the persisted config. A missing, unreadable or invalid record
// falls back to the factory config (version 0), so that the backend sends
// the desired config again; the device still boots.
func (m *ConfigManager) load() {
	var rec configRecord
	err := m.d.fl.Load(RecordConfig, &rec)
	switch {
	case errors.Is(err, flash.ErrNotFound):
		rec = configRecord{Config: m.opt.Default.Clone()}
	case err != nil:
		m.d.log.Error().Err(err).Msg("config record unreadable: using the factory config")
		rec = configRecord{Config: m.opt.Default.Clone()}
	default:
		if verr := rec.Config.Validate(); verr != nil {
			m.d.log.Error().Err(verr).Int64("version", rec.Version).Msg("persisted config invalid: using the factory config")
			rec = configRecord{Config: m.opt.Default.Clone()}
		}
	}
	m.mu.Lock()
	m.rec = rec
	m.mu.Unlock()
}

// Current returns the config version last acknowledged and the config
// the device runs (or will run from the next upload boundary).
func (m *ConfigManager) Current() (int64, topics.Config) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rec.Version, m.rec.Config.Clone()
}

// BootConfig is the acquisition config to start a boot with; it suits
// TelemetryOptions.BootConfig.
func (m *ConfigManager) BootConfig() (acquisition.Config, bool) {
	_, cfg := m.Current()
	return AcquisitionConfig(cfg), true
}

// Stats returns a snapshot of the counters.
func (m *ConfigManager) Stats() ConfigStats {
	return ConfigStats{
		Versions: m.versions.Load(), Changed: m.changed.Load(), Duplicates: m.duplicates.Load(),
		Stale: m.stale.Load(), Malformed: m.malformed.Load(), AckErrors: m.ackErrors.Load(),
	}
}

// AcquisitionConfig converts a wire config (seconds) to the scheduler's.
func AcquisitionConfig(c topics.Config) acquisition.Config {
	return acquisition.Config{
		SamplingInterval: time.Duration(c.SamplingInterval) * time.Second,
		UploadInterval:   time.Duration(c.UploadInterval) * time.Second,
		Registers:        append([]string(nil), c.Registers...),
	}
}

// handle processes one verified down/config message.
func (m *ConfigManager) handle(ctx context.Context, msg envelope.Message) error {
	ack, err := m.process(msg.Body)
	if err != nil {
		return err
	}
	if err := m.d.Publish(ctx, topics.KindConfigAck, topics.ConfigAckBody{ConfigAck: &ack}); err != nil {
		// The backend redelivers until it sees the ack; the redelivery
		// gets the stored ack.
		m.ackErrors.Add(1)
		return fmt.Errorf("config v%d: ack: %w", ack.Version, err)
	}
	return nil
}

// process decides on one config body and returns the ack to send. The
// new state is on flash before process returns, so an ack is never sent
// for a config that a power cut could lose.
func (m *ConfigManager) process(body []byte) (topics.ConfigAck, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.rec
	next, ack, err := topics.ValidateConfigMessage(cur.Config, body)
	if err != nil {
		m.malformed.Add(1)
		return topics.ConfigAck{}, fmt.Errorf("config: not acknowledged: %w", err)
	}
	log := m.d.log.With().Int64("config_version", ack.Version).Logger()
	switch {
	case cur.LastAck != nil && ack.Version == cur.LastAck.Version:
		m.duplicates.Add(1)
		log.Info().Msg("config version delivered again: repeating its ack")
		return *cur.LastAck, nil
	case ack.Version <= cur.Version:
		m.stale.Add(1)
		log.Warn().Int64("current_version", cur.Version).Msg("stale config version: rejected")
		return staleAck(ack, cur.Version), nil
	}
	rec := configRecord{Version: ack.Version, Config: next, LastAck: &ack}
	if err := m.d.fl.Save(RecordConfig, rec); err != nil {
		return topics.ConfigAck{}, fmt.Errorf("config v%d: not acknowledged: persist: %w", ack.Version, err)
	}
	m.rec = rec
	m.versions.Add(1)
	if !next.Equal(cur.Config) {
		m.changed.Add(1)
		if m.opt.Apply != nil {
			if err := m.opt.Apply(next); err != nil {
				// Persisted: the next boot starts with it.
				log.Warn().Err(err).Msg("config not scheduled now; it applies at the next boot")
			}
		}
	}
	log.Info().Int("accepted", len(ack.Accepted)).Int("rejected", len(ack.Rejected)).
		Int("sampling_interval", next.SamplingInterval).Int("upload_interval", next.UploadInterval).
		Strs("registers", next.Registers).Msg("config version processed")
	return ack, nil
}

// staleAck turns the ack a stale version would have had into one that
// rejects every field it gave (accepted or rejected) and changes nothing.
func staleAck(a topics.ConfigAck, current int64) topics.ConfigAck {
	reason := fmt.Sprintf("stale version %d: the device runs version %d", a.Version, current)
	out := topics.ConfigAck{Version: a.Version, Accepted: []topics.FieldChange{}, Unchanged: a.Unchanged,
		Rejected: make([]topics.FieldRejected, 0, len(a.Accepted)+len(a.Rejected))}
	for _, f := range a.Accepted {
		out.Rejected = append(out.Rejected, topics.FieldRejected{Parameter: f.Parameter, Reason: reason})
	}
	for _, f := range a.Rejected {
		out.Rejected = append(out.Rejected, topics.FieldRejected{Parameter: f.Parameter, Reason: reason})
	}
	return out
}
