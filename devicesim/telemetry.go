package devicesim

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/ecowatt/ecowatt/devicesim/acquisition"
	"github.com/ecowatt/ecowatt/devicesim/inverter"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// TelemetryOptions configures AttachTelemetry. Zero fields take defaults.
type TelemetryOptions struct {
	Faults     inverter.Faults    // inverter fault injection
	Seed       uint64             // inverter seed; default a hash of the device ID
	Config     acquisition.Config // initial acquisition config; zero means acquisition.DefaultConfig
	BufferSize int                // sample slots held; default acquisition.DefaultBufferSize
	Modbus     modbus.ClientConfig
	// BootConfig, when set, is asked at every boot for the config to start
	// with (remote configuration keeps it on flash); ok=false means Config.
	BootConfig func() (cfg acquisition.Config, ok bool)
}

// Telemetry is a device's data plane: the inverter it is wired to (which
// outlives gateway reboots) and, per boot, the Modbus adapter and the
// acquisition scheduler that uploads batches with Device.Publish.
type Telemetry struct {
	Inverter *inverter.SIM

	mu     sync.Mutex // guards client and sched
	client *modbus.Client
	sched  *acquisition.Scheduler
}

// AttachTelemetry wires an inverter SIM and an acquisition scheduler into
// d: at every boot a scheduler starts (a Go task) and uploads each batch as
// a signed topics.KindTelemetry message. A batch that cannot be sent
// (offline) stays in the scheduler's bounded backlog for the next upload
// boundary. Call it before d.Run.
func AttachTelemetry(d *Device, opt TelemetryOptions) (*Telemetry, error) {
	if opt.Seed == 0 {
		h := fnv.New64a()
		h.Write([]byte(d.id))
		opt.Seed = h.Sum64()
	}
	if opt.Modbus.Clock == nil {
		opt.Modbus.Clock = d.clk
	}
	if opt.Config.SamplingInterval != 0 || opt.Config.UploadInterval != 0 || opt.Config.Registers != nil {
		if err := acquisition.Validate(opt.Config); err != nil {
			return nil, fmt.Errorf("attach telemetry %s: %w", d.id, err)
		}
	}
	t := &Telemetry{Inverter: inverter.New(inverter.Config{Seed: opt.Seed, Clock: d.clk, Faults: opt.Faults})}
	upload := func(ctx context.Context, b telemetry.Batch) error {
		m, err := telemetry.NewMessage(b)
		if err != nil {
			return err
		}
		return d.Publish(ctx, topics.KindTelemetry, telemetry.Body{Telemetry: &m})
	}
	d.Go("acquisition", func(ctx context.Context) error {
		cfg := opt.Config
		if opt.BootConfig != nil {
			if c, ok := opt.BootConfig(); ok {
				cfg = c
			}
		}
		client := modbus.NewClient(t.Inverter, opt.Modbus)
		sched, err := acquisition.New(acquisition.Options{
			Clock: d.clk, Reader: client, Upload: upload,
			Config: cfg, BufferSize: opt.BufferSize,
		})
		if err != nil {
			return err
		}
		t.mu.Lock()
		t.client, t.sched = client, sched
		t.mu.Unlock()
		if err := sched.Run(ctx); ctx.Err() == nil {
			return err
		}
		return nil
	})
	// A backlog held through an outage goes out as soon as the link is back.
	d.OnConnect(func(context.Context) {
		if s := t.Scheduler(); s != nil {
			s.Reconnected()
		}
	})
	return t, nil
}

// Modbus is the adapter of the current boot (nil before the first boot);
// command execution writes registers through it.
func (t *Telemetry) Modbus() *modbus.Client {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.client
}

// Scheduler is the acquisition scheduler of the current boot (nil before
// the first boot); remote configuration applies changes through it.
func (t *Telemetry) Scheduler() *acquisition.Scheduler {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sched
}
