package main

import (
	"slices"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/topics"
)

// TestConfigPartialChangeKeepsDeviceConfig: a device boots with a config
// of its own (two registers, not the factory ten). Before any change the
// desired config is what it reported, with no drift; an interval-only
// change keeps its registers; and once it acknowledges v1 the device
// record shows config_version 1 at once, without a new birth.
func TestConfigPartialChangeKeepsDeviceConfig(t *testing.T) {
	s := startServer(t)
	keys := s.provision(t, "part", 1)
	const id = "part-0001"
	own := topics.Config{SamplingInterval: 1, UploadInterval: 2, Registers: []string{"voltage", "current"}}
	var sim *devicesim.Features
	startFleet(t, s, keys, "", func(d *devicesim.Device) error {
		f, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{Config: devicesim.ConfigOptions{Default: own}})
		sim = f
		return err
	})
	waitOnline(t, s, 1)

	var d configStateDoc
	eventually(t, 10*time.Second, "the reported config", func() (bool, string) {
		d = getConfig(t, s, id)
		return d.Reported != nil, "nothing reported"
	})
	if d.Desired.Version != 0 || !d.Desired.Equal(own) || len(d.Drift) != 0 {
		t.Fatalf("before any change: desired v%d %+v drift %v, want v0 = the reported %+v, no drift",
			d.Desired.Version, d.Desired.Config, d.Drift, own)
	}

	var res struct {
		Changed bool                 `json:"changed"`
		Changes []topics.FieldChange `json:"changes"`
	}
	if code := s.api(t, "PUT", "/api/v1/devices/"+id+"/config", map[string]int{"sampling_interval": 10, "upload_interval": 30}, &res); code != 200 {
		t.Fatalf("PUT config: %d %+v", code, res)
	}
	var changed []string
	for _, c := range res.Changes {
		changed = append(changed, c.Parameter)
	}
	slices.Sort(changed)
	if !res.Changed || !slices.Equal(changed, []string{topics.ParamSamplingInterval, topics.ParamUploadInterval}) {
		t.Fatalf("PUT changes %v (changed %t), want the two intervals only", changed, res.Changed)
	}
	want := topics.Config{SamplingInterval: 10, UploadInterval: 30, Registers: own.Registers}
	d = waitInSync(t, s, id, 1)
	if !d.Desired.Equal(want) || len(d.Drift) != 0 {
		t.Fatalf("after an interval-only change: desired %+v drift %v, want %+v", d.Desired.Config, d.Drift, want)
	}
	if v, cfg := sim.Config.Current(); v != 1 || !cfg.Equal(want) {
		t.Fatalf("device runs v%d %+v, want v1 %+v", v, cfg, want)
	}

	var dev struct {
		ConfigVersion int64 `json:"config_version"`
	}
	if code := s.api(t, "GET", "/api/v1/devices/"+id, nil, &dev); code != 200 || dev.ConfigVersion != 1 {
		t.Fatalf("GET device after the v1 ack: %d config_version %d, want 1", code, dev.ConfigVersion)
	}
}
