package devicesim

import (
	"errors"
	"fmt"

	"github.com/ecowatt/ecowatt/topics"
)

// FeatureOptions configures AttachFeatures.
type FeatureOptions struct {
	Telemetry TelemetryOptions // BootConfig is set by AttachFeatures
	Config    ConfigOptions    // Apply is set by AttachFeatures
	Commands  CommandOptions   // Modbus is set by AttachFeatures
	FOTA      FOTAOptions      // PublicKey: the firmware-signing key
}

// Features are the firmware features of one device, wired together.
type Features struct {
	Telemetry *Telemetry
	Config    *ConfigManager
	Commands  *CommandExecutor
	FOTA      *FOTAManager
}

// errNoScheduler means the acquisition scheduler of this boot is not up.
var errNoScheduler = errors.New("acquisition scheduler not running")

// AttachFeatures wires the data plane, remote configuration, command
// execution and firmware updates into d: the scheduler starts each boot
// with the persisted config, a new config version is applied through the
// scheduler at its next upload boundary, commands reach the inverter
// through the boot's Modbus adapter, and FOTA (with its bootloader hook)
// updates the firmware. Call it before d.Run.
func AttachFeatures(d *Device, opt FeatureOptions) (*Features, error) {
	f := &Features{}
	opt.Config.Apply = func(c topics.Config) error {
		s := f.Telemetry.Scheduler()
		if s == nil {
			return errNoScheduler
		}
		return s.Apply(AcquisitionConfig(c))
	}
	var err error
	if f.Config, err = AttachConfig(d, opt.Config); err != nil {
		return nil, err
	}
	opt.Telemetry.BootConfig = f.Config.BootConfig
	if f.Telemetry, err = AttachTelemetry(d, opt.Telemetry); err != nil {
		return nil, err
	}
	opt.Commands.Modbus = func() RegisterIO {
		if c := f.Telemetry.Modbus(); c != nil {
			return c
		}
		return nil
	}
	if f.Commands, err = AttachCommands(d, opt.Commands); err != nil {
		return nil, fmt.Errorf("attach features: %w", err)
	}
	if f.FOTA, err = AttachFOTA(d, opt.FOTA); err != nil {
		return nil, fmt.Errorf("attach features: %w", err)
	}
	return f, nil
}
