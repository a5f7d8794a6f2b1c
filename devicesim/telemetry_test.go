package devicesim

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/acquisition"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// TestTelemetryUpload runs the acquisition scheduler on a device and checks
// that signed, decodable batches reach the broker.
func TestTelemetryUpload(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	psk := testKey(8)
	keys := mustKeys(t, psk)
	d := newTestDevice(t, b, "dev-8", psk, t.TempDir(), nil)
	tel, err := AttachTelemetry(d, TelemetryOptions{Config: acquisition.Config{
		SamplingInterval: 100 * time.Millisecond,
		UploadInterval:   300 * time.Millisecond,
		Registers:        []string{"voltage", "current"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, d)
	topic := topics.DeviceUp("dev-8", topics.KindTelemetry)
	var batches []telemetry.Batch
	eventually(t, "two telemetry batches", func() bool {
		batches = batches[:0]
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, m := range b.msgs {
			if m.topic != topic {
				continue
			}
			msg, err := envelope.Open(keys, topic, m.payload)
			if err != nil {
				t.Fatalf("telemetry envelope: %v", err)
			}
			var body telemetry.Body
			if err := json.Unmarshal(msg.Body, &body); err != nil || body.Telemetry == nil {
				t.Fatalf("telemetry body %s: %v", msg.Body, err)
			}
			batch, err := body.Telemetry.Batch(telemetry.Limits{})
			if err != nil {
				t.Fatalf("telemetry batch: %v", err)
			}
			batches = append(batches, batch)
		}
		return len(batches) >= 2
	})
	if len(batches[1].Samples) == 0 || len(batches[1].Registers) != 2 {
		t.Errorf("batch = %+v", batches[1])
	}
	if tel.Scheduler() == nil || tel.Modbus() == nil {
		t.Error("scheduler or adapter not exposed")
	}
	r.stop(t)
	checkNoLeak(t)
}
