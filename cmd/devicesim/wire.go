package main

import (
	"errors"
	"sync"

	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/devicesim/inverter"
)

// wiring plugs device features into each simulated device: the data plane
// (inverter SIM + acquisition scheduler uploading telemetry), remote
// configuration, command execution and FOTA, and the fault profile.
type wiring struct {
	faults   inverter.Faults
	fota     devicesim.FOTAOptions
	powerCut int // cut the power at the write of this firmware chunk (0: never)
}

func newWiring(faultSpec string) (*wiring, error) {
	f, err := inverter.ParseFaults(faultSpec)
	if err != nil {
		return nil, err
	}
	return &wiring{faults: f}, nil
}

func (w *wiring) setup(d *devicesim.Device) error {
	if w.powerCut > 0 {
		armPowerCut(d, w.powerCut) // first: its boot hook restores the power
	}
	_, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{
		Telemetry: devicesim.TelemetryOptions{Faults: w.faults},
		FOTA:      w.fota,
	})
	return err
}

// armPowerCut cuts d's power once, at the write of the n-th firmware chunk
// into a slot: from then on every flash write fails, the device reboots
// (power comes back), and its bootloader and FOTA resume from flash.
func armPowerCut(d *devicesim.Device, n int) {
	cut := &flash.PowerCut{Prefix: devicesim.SlotFile(""), Step: flash.StepWrite, N: n}
	var once sync.Once
	d.Flash().SetFault(func(op flash.Op) error {
		err := cut.Fault(op)
		if errors.Is(err, flash.ErrPowerCut) {
			once.Do(func() { d.Reboot("power cut") })
		}
		return err
	})
	d.OnBoot(func(*devicesim.BootRecord) error {
		if cut.Hit() {
			d.Flash().SetFault(nil) // power restored; cut once only
		}
		return nil
	})
}
