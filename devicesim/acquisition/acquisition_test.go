package acquisition

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/inverter"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// t0 is aligned to every interval the tests use.
var t0 = time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)

// rig is a scheduler wired to a simulated inverter on a fake clock, with
// an upload function that records batches and fails while down says so.
type rig struct {
	clk   *clock.Fake
	sim   *inverter.SIM
	sched *Scheduler

	mu       sync.Mutex
	down     func(time.Time) bool
	uploaded []telemetry.Batch
	at       []time.Time // when each batch was uploaded
	attempts int
}

func newRig(t *testing.T, cfg Config, faults inverter.Faults, buffer int, tries ...int) *rig {
	t.Helper()
	r := &rig{clk: clock.NewFake(t0)}
	r.sim = inverter.New(inverter.Config{Seed: 42, Clock: r.clk, Faults: faults})
	ccfg := modbus.ClientConfig{Clock: r.clk}
	if len(tries) > 0 {
		ccfg.Tries = tries[0]
	}
	client := modbus.NewClient(r.sim, ccfg)
	s, err := New(Options{Clock: r.clk, Reader: client, Upload: r.upload, Config: cfg, BufferSize: buffer})
	if err != nil {
		t.Fatal(err)
	}
	r.sched = s
	return r
}

func (r *rig) upload(_ context.Context, b telemetry.Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts++
	if r.down != nil && r.down(r.clk.Now()) {
		return errors.New("broker unreachable")
	}
	// Check the batch survives the wire before recording it.
	m, err := telemetry.NewMessage(b)
	if err != nil {
		return err
	}
	got, err := m.Batch(telemetry.Limits{NotAfter: r.clk.Now()})
	if err != nil {
		return err
	}
	r.uploaded = append(r.uploaded, got)
	r.at = append(r.at, r.clk.Now())
	return nil
}

// run drives the scheduler for d of fake time.
func (r *rig) run(t *testing.T, d time.Duration) {
	t.Helper()
	ctx, cancel := clock.WithTimeout(context.Background(), r.clk, d)
	defer cancel()
	var err error
	r.clk.Drive(func() { err = r.sched.Run(ctx) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
}

func (r *rig) batches() []telemetry.Batch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.uploaded)
}

// checkSeq checks batches are in order with consecutive sequence numbers
// and strictly increasing sample times.
func checkSeq(t *testing.T, bs []telemetry.Batch) {
	t.Helper()
	var last int64
	for i, b := range bs {
		if b.Seq != uint64(i+1) {
			t.Fatalf("batch %d has seq %d", i, b.Seq)
		}
		for _, s := range b.Samples {
			if s.Time <= last {
				t.Fatalf("batch %d: sample at %d after %d", i, s.Time, last)
			}
			last = s.Time
		}
	}
}

func TestSampleCounts(t *testing.T) {
	tests := []struct {
		sampling, upload, run time.Duration
		registers             []string
	}{
		{5 * time.Second, 15 * time.Second, 10 * time.Minute, nil},
		{time.Second, 10 * time.Second, 5 * time.Minute, []string{"voltage", "output_power"}},
		{5 * time.Second, 15 * time.Minute, 2 * time.Hour, []string{"temperature", "pv1_voltage", "pv1_current", "current"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v/%v", tt.sampling, tt.upload), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.SamplingInterval, cfg.UploadInterval = tt.sampling, tt.upload
			if tt.registers != nil {
				cfg.Registers = tt.registers
			}
			r := newRig(t, cfg, inverter.Faults{}, 0)
			r.run(t, tt.run)
			bs := r.batches()
			checkSeq(t, bs)
			perBatch := int(tt.upload / tt.sampling)
			wantBatches := int(tt.run/tt.upload) - 1 // the last boundary is when Run stops
			if len(bs) != wantBatches {
				t.Fatalf("%d batches, want %d", len(bs), wantBatches)
			}
			for i, b := range bs {
				if len(b.Samples) != perBatch || b.Dropped != 0 || b.Failures() != 0 {
					t.Fatalf("batch %d: %d samples, dropped %d, failures %d", i, len(b.Samples), b.Dropped, b.Failures())
				}
				for j, s := range b.Samples {
					want := t0.Add(time.Duration(i*perBatch+j) * tt.sampling).UnixMilli()
					if s.Time != want {
						t.Fatalf("batch %d sample %d at %d, want %d", i, j, s.Time, want)
					}
				}
				if len(b.Registers) != len(cfg.Registers) {
					t.Fatalf("registers %v", b.Registers)
				}
			}
			st := r.sched.Stats()
			if wantSlots := uint64(tt.run / tt.sampling); st.Slots != wantSlots || st.Samples != wantSlots {
				t.Fatalf("stats %+v, want %d slots", st, wantSlots)
			}
			if st.Buffered != perBatch || st.Backlog != 0 {
				t.Fatalf("left %d buffered, %d backlog", st.Buffered, st.Backlog)
			}
		})
	}
}

func TestOutageBacklog(t *testing.T) {
	r := newRig(t, DefaultConfig(), inverter.Faults{}, 0)
	r.down = func(now time.Time) bool {
		return now.After(t0.Add(20*time.Second)) && now.Before(t0.Add(95*time.Second))
	}
	r.run(t, 2*time.Minute)
	bs := r.batches()
	checkSeq(t, bs)
	// Boundaries at 15 s .. 105 s: 7 batches, all delivered once the broker is back.
	if len(bs) != 7 {
		t.Fatalf("%d batches uploaded, want 7", len(bs))
	}
	n := 0
	for _, b := range bs {
		n += len(b.Samples)
	}
	st := r.sched.Stats()
	if n != 21 || st.Dropped != 0 || st.UploadErrors != 5 || st.Uploaded != 7 || st.Backlog != 0 {
		t.Fatalf("%d samples delivered; stats %+v", n, st)
	}
}

// TestReconnectedUploadsBacklog: the backlog goes out as soon as the link
// is back, not at the next upload boundary.
func TestReconnectedUploadsBacklog(t *testing.T) {
	r := newRig(t, DefaultConfig(), inverter.Faults{}, 0)
	r.down = func(now time.Time) bool {
		return now.After(t0.Add(20*time.Second)) && now.Before(t0.Add(95*time.Second))
	}
	back := t0.Add(97 * time.Second) // between the 90 s and 105 s boundaries
	r.clk.AfterFunc(back.Sub(t0), r.sched.Reconnected)
	r.run(t, 2*time.Minute)
	checkSeq(t, r.batches())
	r.mu.Lock()
	defer r.mu.Unlock()
	// Batches of the 30, 45, 60, 75 and 90 s boundaries waited in the
	// backlog; they go out at the reconnect, not at the 105 s boundary.
	early := 0
	for _, at := range r.at {
		if at.Equal(back) {
			early++
		}
	}
	if early != 5 || len(r.at) != 7 {
		t.Fatalf("%d of %d batches uploaded at the reconnect (%s), want 5 of 7; upload times %v", early, len(r.at), back, r.at)
	}
}

func TestOverflowDropsOldest(t *testing.T) {
	r := newRig(t, DefaultConfig(), inverter.Faults{}, 10)
	r.down = func(now time.Time) bool { return now.Before(t0.Add(100 * time.Second)) }
	r.run(t, 2*time.Minute)
	bs := r.batches()
	st := r.sched.Stats()
	var delivered, dropped uint64
	for _, b := range bs {
		delivered += uint64(len(b.Samples))
		dropped += b.Dropped
	}
	// 24 slots: 3 still pending at the end, the rest delivered or dropped.
	if st.Slots != 24 || delivered+dropped+uint64(st.Buffered) != 24 || dropped != st.Dropped || dropped == 0 {
		t.Fatalf("delivered %d dropped %d buffered %d; stats %+v", delivered, dropped, st.Buffered, st)
	}
	// The survivors are the newest slots, in order.
	first := bs[0].Samples[0].Time
	if want := t0.Add(time.Duration(dropped) * 5 * time.Second).UnixMilli(); first != want {
		t.Fatalf("oldest delivered sample at %d, want %d", first, want)
	}
	for i := 1; i < len(bs); i++ {
		if bs[i].Seq <= bs[i-1].Seq {
			t.Fatalf("batches out of order: %d after %d", bs[i].Seq, bs[i-1].Seq)
		}
	}
}

func TestFaultAccounting(t *testing.T) {
	tests := []struct {
		name   string
		faults string
		tries  int
	}{
		{"five percent", "crc=0.01,drop=0.01,delay=0.01,exception=0.01,corrupt=0.01", 3},
		{"five percent single try", "crc=0.01,drop=0.01,delay=0.01,exception=0.01,corrupt=0.01", 1},
		{"forty percent", "crc=0.08,drop=0.08,delay=0.08,exception=0.08,corrupt=0.08", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := inverter.ParseFaults(tt.faults)
			if err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			cfg.Registers = []string{"voltage", "current", "frequency", "export_power", "output_power"}
			r := newRig(t, cfg, f, 0, tt.tries)
			r.run(t, 2*time.Hour)
			st := r.sched.Stats()
			var slots, present, missing uint64
			var perReg [telemetry.NumRegisters]uint64
			for _, b := range r.batches() {
				slots += uint64(len(b.Samples)) + b.Dropped
				for _, s := range b.Samples {
					for i, code := range b.Registers {
						if s.Present(i) {
							present++
						} else {
							missing++
							perReg[code]++
						}
					}
				}
			}
			slots += uint64(st.Buffered)
			if slots != st.Slots || st.Dropped != 0 {
				t.Fatalf("%d slots accounted, %d due (dropped %d)", slots, st.Slots, st.Dropped)
			}
			held := uint64(st.Buffered) * uint64(len(cfg.Registers))
			if present+missing+held != st.Slots*uint64(len(cfg.Registers)) {
				t.Fatalf("present %d + missing %d + held %d != %d slots x %d registers", present, missing, held, st.Slots, len(cfg.Registers))
			}
			var failures uint64
			for c, n := range st.Failures {
				failures += n
				if c < len(perReg) && perReg[c] > n {
					t.Fatalf("register %d: %d missing in batches, %d failures counted", c, perReg[c], n)
				}
			}
			if missing > failures || (tt.tries > 1) != (st.Adapter.Retries > 0) {
				t.Fatalf("missing %d, failures %d, adapter %+v", missing, failures, st.Adapter)
			}
			// Register runs {0,1,2} and {8,9}: one failed request misses all its registers.
			if st.Failures[0] != st.Failures[1] || st.Failures[8] != st.Failures[9] ||
				st.Adapter.Failures != st.Failures[0]+st.Failures[8] {
				t.Fatalf("failures %v, adapter %+v", st.Failures, st.Adapter)
			}
			t.Logf("slots %d, missing %d, adapter %+v", st.Slots, missing, st.Adapter)
		})
	}
}

func TestApplyAtBoundary(t *testing.T) {
	r := newRig(t, DefaultConfig(), inverter.Faults{}, 0)
	var applied []Config
	r.sched.onApplied = func(c Config) { applied = append(applied, c) }
	next := Config{SamplingInterval: 2 * time.Second, UploadInterval: 10 * time.Second, Registers: []string{"output_power"}}
	t.Run("rejects invalid", func(t *testing.T) {
		bad := []Config{
			{SamplingInterval: 0, UploadInterval: time.Second, Registers: []string{"voltage"}},
			{SamplingInterval: 2 * time.Second, UploadInterval: 3 * time.Second, Registers: []string{"voltage"}},
			{SamplingInterval: time.Second, UploadInterval: time.Second, Registers: []string{"power"}},
			{SamplingInterval: time.Second, UploadInterval: time.Second, Registers: []string{"voltage", "voltage"}},
			{SamplingInterval: time.Second, UploadInterval: time.Second},
		}
		for _, c := range bad {
			if err := r.sched.Apply(c); !errors.Is(err, ErrConfig) {
				t.Errorf("Apply(%+v) = %v", c, err)
			}
		}
	})
	// Apply mid-way through the second batch: it takes effect at 30 s.
	r.clk.AfterFunc(20*time.Second, func() {
		if err := r.sched.Apply(next); err != nil {
			t.Error(err)
		}
	})
	r.run(t, time.Minute)
	bs := r.batches()
	checkSeq(t, bs)
	if len(applied) != 1 {
		t.Fatalf("applied %d times", len(applied))
	}
	for i, b := range bs {
		old := b.Samples[0].Time < t0.Add(30*time.Second).UnixMilli()
		switch {
		case old && (len(b.Registers) != 10 || len(b.Samples) != 3 || b.Interval != 5*time.Second):
			t.Fatalf("batch %d before the change: %d registers, %d samples", i, len(b.Registers), len(b.Samples))
		case !old && (len(b.Registers) != 1 || len(b.Samples) != 5 || b.Interval != 2*time.Second):
			t.Fatalf("batch %d after the change: %d registers, %d samples", i, len(b.Registers), len(b.Samples))
		}
	}
	if len(bs) != 4 || bs[2].Samples[0].Time != t0.Add(30*time.Second).UnixMilli() {
		t.Fatalf("%d batches", len(bs))
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without Reader and Upload succeeded")
	}
	sim := inverter.New(inverter.Config{})
	_, err := New(Options{Reader: modbus.NewClient(sim, modbus.ClientConfig{}), Upload: func(context.Context, telemetry.Batch) error { return nil },
		Config: Config{SamplingInterval: time.Millisecond, UploadInterval: time.Second, Registers: []string{"voltage"}}})
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("err = %v", err)
	}
}
