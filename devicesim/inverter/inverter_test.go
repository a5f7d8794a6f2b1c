package inverter

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
)

var noon = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func TestHandle(t *testing.T) {
	sim := New(Config{Seed: 1, Clock: clock.NewFake(noon)})
	exc := func(fn, code byte) []byte { return modbus.EncodeException(0x11, fn, code) }
	tests := []struct {
		name string
		req  []byte
		want []byte // nil: a read response of the right size is enough
	}{
		{"read all", modbus.EncodeReadRequest(0x11, 0, 10), nil},
		{"read one", modbus.EncodeReadRequest(0x11, 9, 1), nil},
		{"read past map", modbus.EncodeReadRequest(0x11, 8, 3), exc(3, modbus.ExIllegalAddress)},
		{"read unknown address", modbus.EncodeReadRequest(0x11, 0x6B, 2), exc(3, modbus.ExIllegalAddress)},
		{"read zero registers", modbus.EncodeReadRequest(0x11, 0, 0), exc(3, modbus.ExIllegalValue)},
		{"write export power", modbus.EncodeWriteRequest(0x11, 8, 40), modbus.EncodeWriteRequest(0x11, 8, 40)},
		{"write export power 150", modbus.EncodeWriteRequest(0x11, 8, 150), exc(6, modbus.ExIllegalValue)},
		{"write read-only register", modbus.EncodeWriteRequest(0x11, 0, 2300), exc(6, modbus.ExIllegalAddress)},
		{"write unknown address", modbus.EncodeWriteRequest(0x11, 10, 1), exc(6, modbus.ExIllegalAddress)},
		{"unknown function", modbus.AppendCRC([]byte{0x11, 0x10, 0, 8, 0, 1, 2, 0, 5}), exc(0x10, modbus.ExIllegalFunction)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := sim.Handle(tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				r, _ := modbus.DecodeRequest(tt.req)
				if _, err := modbus.DecodeReadResponse(resp, 0x11, r.Value); err != nil {
					t.Fatal(err)
				}
				return
			}
			if string(resp) != string(tt.want) {
				t.Fatalf("resp % X, want % X", resp, tt.want)
			}
		})
	}
	t.Run("silent on bad frames", func(t *testing.T) {
		for _, req := range [][]byte{
			{0x11, 0x03, 0x00, 0x6B, 0x00, 0x02, 0xC4, 0x0B}, // bad CRC
			modbus.EncodeReadRequest(0x12, 0, 1),             // other slave
			{0x11},
		} {
			if resp, err := sim.Handle(req); err == nil || resp != nil {
				t.Errorf("Handle(% X) = % X, %v", req, resp, err)
			}
		}
	})
	t.Run("export power kept", func(t *testing.T) {
		if v := sim.Values()[8]; v != 40 {
			t.Fatalf("export_power = %d", v)
		}
	})
}

func TestValues(t *testing.T) {
	clk := clock.NewFake(noon)
	a, b := New(Config{Seed: 7, Clock: clk}), New(Config{Seed: 7, Clock: clk})
	if a.Values() != b.Values() {
		t.Fatal("same seed and time gave different values")
	}
	if c := New(Config{Seed: 8, Clock: clk}); c.Values() == a.Values() {
		t.Fatal("different seeds gave identical values")
	}
	t.Run("plausible over a day", func(t *testing.T) {
		clk := clock.NewFake(time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC))
		sim := New(Config{Seed: 3, Clock: clk})
		var peak uint16
		for range 24 * 60 {
			v := sim.Values()
			h := clk.Now().Hour()
			if math.Abs(float64(v[0])/10-230) > 3 || math.Abs(float64(v[2])/100-50) > 0.05 {
				t.Fatalf("%v: grid %v", clk.Now(), v)
			}
			if (h < 6 || h >= 18) && (v[9] != 0 || v[3] != 0 || v[5] != 0) {
				t.Fatalf("%v: power at night %v", clk.Now(), v)
			}
			if v[9] > 5000 || v[7] < 150 || v[7] > 800 {
				t.Fatalf("%v: implausible %v", clk.Now(), v)
			}
			peak = max(peak, v[9])
			clk.Advance(time.Minute)
		}
		if peak < 2500 {
			t.Fatalf("peak output %d W", peak)
		}
	})
	t.Run("export limit caps output", func(t *testing.T) {
		sim := New(Config{Seed: 3, Clock: clk})
		if _, err := sim.Handle(modbus.EncodeWriteRequest(0x11, 8, 10)); err != nil {
			t.Fatal(err)
		}
		v := sim.Values()
		if v[9] > 510 || v[8] != 10 {
			t.Fatalf("values with 10%% export: %v", v)
		}
		full := New(Config{Seed: 3, Clock: clk}).Values()
		if full[7] <= v[7] {
			t.Fatalf("temperature at full power %d not above %d", full[7], v[7])
		}
	})
}

func TestParseFaults(t *testing.T) {
	good := []struct {
		spec string
		want Faults
	}{
		{"", Faults{}},
		{"crc=0.02,drop=0.01,delay=0.01,exception=0.01,corrupt=0.01", Faults{CRC: 0.02, Drop: 0.01, Delay: 0.01, Exception: 0.01, Corrupt: 0.01}},
		{" drop = 1 ", Faults{Drop: 1}},
		{"delay=0.5,delay_for=250ms", Faults{Delay: 0.5, DelayFor: 250 * time.Millisecond}},
	}
	for _, tt := range good {
		t.Run("ok "+tt.spec, func(t *testing.T) {
			got, err := ParseFaults(tt.spec)
			if err != nil || got != tt.want {
				t.Fatalf("ParseFaults = %+v, %v", got, err)
			}
			again, err := ParseFaults(got.String())
			if err != nil || again != got {
				t.Fatalf("String round trip %q = %+v, %v", got.String(), again, err)
			}
		})
	}
	bad := []string{"crc", "crc=", "=0.1", "crc=abc", "crc=-0.1", "crc=1.5", "crc=NaN", "crc=0.1,crc=0.2",
		"jitter=0.1", "crc=0.6,drop=0.6", "delay_for=fast", "delay_for=-1s"}
	for _, spec := range bad {
		t.Run("bad "+spec, func(t *testing.T) {
			if _, err := ParseFaults(spec); !errors.Is(err, ErrFaultSpec) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestTransactFaults(t *testing.T) {
	tests := []struct {
		kind   string
		faults Faults
		check  func(modbus.Stats) bool
	}{
		{"exception", Faults{Exception: 1}, func(s modbus.Stats) bool { return s.Exceptions == 3 }},
		{"crc", Faults{CRC: 1}, func(s modbus.Stats) bool { return s.CRCErrors == 3 }},
		{"corrupt", Faults{Corrupt: 1}, func(s modbus.Stats) bool { return s.CRCErrors == 3 }},
		{"drop", Faults{Drop: 1}, func(s modbus.Stats) bool { return s.Timeouts == 3 }},
		{"delay beyond timeout", Faults{Delay: 1}, func(s modbus.Stats) bool { return s.Timeouts == 3 }},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			clk := clock.NewFake(noon)
			sim := New(Config{Seed: 1, Clock: clk, Faults: tt.faults})
			c := modbus.NewClient(sim, modbus.ClientConfig{Clock: clk})
			var err error
			clk.Drive(func() { _, err = c.ReadRegisters(context.Background(), 0, 10) })
			if err == nil {
				t.Fatal("read succeeded through certain faults")
			}
			if s := c.Stats(); s.Failures != 1 || s.Retries != 2 || !tt.check(s) {
				t.Fatalf("stats = %+v", s)
			}
		})
	}
	t.Run("short delay answers", func(t *testing.T) {
		clk := clock.NewFake(noon)
		sim := New(Config{Seed: 1, Clock: clk, Faults: Faults{Delay: 1, DelayFor: 300 * time.Millisecond}})
		c := modbus.NewClient(sim, modbus.ClientConfig{Clock: clk})
		var err error
		clk.Drive(func() { _, err = c.ReadRegisters(context.Background(), 0, 10) })
		if err != nil || clk.Now().Sub(noon) != 300*time.Millisecond {
			t.Fatalf("err = %v after %v", err, clk.Now().Sub(noon))
		}
	})
	t.Run("rates", func(t *testing.T) {
		clk := clock.NewFake(noon)
		f, _ := ParseFaults("crc=0.1,exception=0.05,corrupt=0.05")
		sim := New(Config{Seed: 9, Clock: clk, Faults: f})
		for range 10000 {
			if _, err := sim.Transact(context.Background(), modbus.EncodeReadRequest(0x11, 0, 1)); err != nil {
				t.Fatal(err)
			}
		}
		n := sim.FaultCounts()
		if n[CRCError] < 900 || n[CRCError] > 1100 || n[Exception] < 400 || n[Exception] > 600 || n[Corrupt] < 400 || n[Corrupt] > 600 {
			t.Fatalf("fault counts %v", n)
		}
	})
}

func FuzzHandle(f *testing.F) {
	f.Add(modbus.EncodeReadRequest(0x11, 0, 10))
	f.Add(modbus.EncodeWriteRequest(0x11, 8, 50))
	f.Add(modbus.EncodeWriteRequest(0x11, 8, 150))
	f.Add([]byte{0x11, 0x03, 0x00, 0x6B, 0x00, 0x02, 0xC4, 0x0B})
	f.Fuzz(func(t *testing.T, req []byte) {
		sim := New(Config{Seed: 1, Clock: clock.NewFake(noon)})
		resp, err := sim.Handle(req)
		if err != nil {
			if resp != nil {
				t.Fatal("response with an error")
			}
			return
		}
		if len(resp) < 5 || modbus.CRC(resp[:len(resp)-2]) != uint16(resp[len(resp)-2])|uint16(resp[len(resp)-1])<<8 {
			t.Fatalf("bad response % X", resp)
		}
	})
}
