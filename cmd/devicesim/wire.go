package main

import (
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/devicesim/inverter"
)

// wiring plugs device features into each simulated device: the data plane
// (inverter SIM + acquisition scheduler uploading telemetry), remote
// configuration and command execution. FOTA registers here the same way,
// with d.Handle(kind, ...), d.OnBirth and d.OnBoot.
type wiring struct {
	faults inverter.Faults
}

func newWiring(faultSpec string) (*wiring, error) {
	f, err := inverter.ParseFaults(faultSpec)
	if err != nil {
		return nil, err
	}
	return &wiring{faults: f}, nil
}

func (w *wiring) setup(d *devicesim.Device) error {
	_, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{
		Telemetry: devicesim.TelemetryOptions{Faults: w.faults},
	})
	return err
}
