package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/devicesim/inverter"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics"
)

// fastTelemetry samples every second and uploads every 2 s, so that an end
// to end test sees several batches in a few seconds.
func fastTelemetry(faults inverter.Faults, tries int) func(*devicesim.Device) error {
	return func(d *devicesim.Device) error {
		_, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{
			Telemetry: devicesim.TelemetryOptions{
				Faults: faults,
				Modbus: modbus.ClientConfig{Timeout: 150 * time.Millisecond, Tries: tries, RetryDelay: 10 * time.Millisecond},
			},
			Config: devicesim.ConfigOptions{Default: topics.Config{
				SamplingInterval: 1, UploadInterval: 2,
				Registers: []string{"voltage", "current", "output_power"},
			}},
		})
		return err
	}
}

type telemetryDoc struct {
	Registers []struct {
		Name   string `json:"name"`
		Unit   string `json:"unit"`
		Points []struct {
			T time.Time `json:"t"`
			V float64   `json:"v"`
		} `json:"points"`
	} `json:"registers"`
}

type deviceTelemetryDoc struct {
	LastUpload *time.Time `json:"last_upload"`
	Latest     []struct {
		Name  string  `json:"name"`
		Value float64 `json:"value"`
		Unit  string  `json:"unit"`
	} `json:"latest"`
	Counters struct {
		Batches      int `json:"batches"`
		Samples      int `json:"samples"`
		Dropped      int `json:"dropped"`
		ReadFailures int `json:"read_failures"`
	} `json:"telemetry_counters"`
}

// TestTelemetryFleet: 20 simulated devices over the real broker and Redis
// all yield telemetry, one sample per sampling interval.
func TestTelemetryFleet(t *testing.T) {
	s := startServer(t)
	keys := s.provision(t, "tm", 20)
	startFleet(t, s, keys, "", fastTelemetry(inverter.Faults{}, 3))

	eventually(t, 60*time.Second, "3 batches from every device", func() (bool, string) {
		for id := range keys {
			var d deviceTelemetryDoc
			s.api(t, "GET", "/api/v1/devices/"+id, nil, &d)
			if d.Counters.Batches < 3 {
				return false, fmt.Sprintf("%s has %d batches", id, d.Counters.Batches)
			}
		}
		return true, ""
	})
	for id := range keys {
		var d deviceTelemetryDoc
		s.api(t, "GET", "/api/v1/devices/"+id, nil, &d)
		if d.LastUpload == nil || len(d.Latest) != 3 {
			t.Fatalf("%s: last_upload %v, latest %+v", id, d.LastUpload, d.Latest)
		}
		var tm telemetryDoc
		if code := s.api(t, "GET", "/api/v1/devices/"+id+"/telemetry?registers=voltage,output_power", nil, &tm); code != 200 {
			t.Fatalf("%s telemetry: %d", id, code)
		}
		if len(tm.Registers) != 2 {
			t.Fatalf("%s: %d registers, want 2", id, len(tm.Registers))
		}
		for _, r := range tm.Registers {
			if len(r.Points) < 4 {
				t.Fatalf("%s %s: %d points", id, r.Name, len(r.Points))
			}
			for i := 1; i < len(r.Points); i++ {
				if gap := r.Points[i].T.Sub(r.Points[i-1].T); gap != time.Second {
					t.Fatalf("%s %s: samples %s apart, want the 1 s sampling interval", id, r.Name, gap)
				}
			}
			if r.Name == "voltage" && (r.Unit != "V" || r.Points[0].V < 200 || r.Points[0].V > 260) {
				t.Fatalf("%s voltage: %v %s", id, r.Points[0].V, r.Unit)
			}
		}
	}
}

// TestTelemetryFaultsAccounted: with 5% inverter faults and no Modbus
// retries, every sample slot is either stored or reported as a failure.
func TestTelemetryFaultsAccounted(t *testing.T) {
	s := startServer(t)
	keys := s.provision(t, "tf", 3)
	faults, err := inverter.ParseFaults("crc=0.02,exception=0.02,corrupt=0.01")
	if err != nil {
		t.Fatal(err)
	}
	startFleet(t, s, keys, "", fastTelemetry(faults, 1))

	eventually(t, 60*time.Second, "enough samples with some failures", func() (bool, string) {
		total := 0
		for id := range keys {
			var d deviceTelemetryDoc
			s.api(t, "GET", "/api/v1/devices/"+id, nil, &d)
			total += d.Counters.ReadFailures
			if d.Counters.Samples < 12 {
				return false, fmt.Sprintf("%s: %d samples", id, d.Counters.Samples)
			}
		}
		return total > 0, fmt.Sprintf("%d read failures so far", total)
	})
	for id := range keys {
		var d deviceTelemetryDoc
		s.api(t, "GET", "/api/v1/devices/"+id, nil, &d)
		var tm telemetryDoc
		s.api(t, "GET", "/api/v1/devices/"+id+"/telemetry", nil, &tm)
		stored := 0
		for _, r := range tm.Registers {
			stored += len(r.Points)
		}
		// The counters may have moved on since the query; read them again
		// and accept the query only if no batch arrived in between.
		var after deviceTelemetryDoc
		s.api(t, "GET", "/api/v1/devices/"+id, nil, &after)
		if after.Counters.Batches != d.Counters.Batches {
			continue
		}
		slots := d.Counters.Samples * 3
		if stored+d.Counters.ReadFailures != slots {
			t.Errorf("%s: %d readings stored + %d reported failures != %d slots (%d samples x 3 registers)",
				id, stored, d.Counters.ReadFailures, slots, d.Counters.Samples)
		}
	}
}

// TestCLIObserve: the telemetry, device events and events commands show
// what a running fleet does.
func TestCLIObserve(t *testing.T) {
	s := startServer(t)
	keys := s.provision(t, "ob", 2)

	// Follow the live stream before the devices come up.
	ctx, cancel := context.WithCancel(context.Background())
	var stream syncBuffer
	env := map[string]string{"ECOWATT_SERVER": s.HTTP, "ECOWATT_ADMIN_TOKEN": s.Token}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"events", "--kind", "presence"}, func(k string) string { return env[k] }, &stream, io.Discard)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("events: %v", err)
		}
	}()
	time.Sleep(300 * time.Millisecond) // let the stream subscribe

	startFleet(t, s, keys, "", fastTelemetry(inverter.Faults{}, 3))
	eventually(t, 30*time.Second, "telemetry table", func() (bool, string) {
		out, err := s.cli(t, "telemetry", "ob-0001", "--registers", "voltage,output_power")
		return err == nil && strings.Contains(out, "voltage (V)") && strings.Count(out, "\n") >= 3, out
	})
	out, err := s.cli(t, "device", "events", "ob-0002")
	if err != nil || !strings.Contains(out, "presence") {
		t.Fatalf("device events: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, "presence events on the live stream", func() (bool, string) {
		got := stream.String()
		return strings.Contains(got, "ob-0001") && strings.Contains(got, "ob-0002"), got
	})
	if _, err := s.cli(t, "telemetry", "ob-0001", "--registers", "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("unknown register: %v", err)
	}
}
